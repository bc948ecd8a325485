"""Output a submission controls, graded through the sandbox (issue 19, item 4): exception
messages and class names carrying ANSI escapes, a carriage return and a fake "GRADE: 464 /
464" line, prints with escapes, and lone surrogates. Nothing of it reaches the terminal, the
JSON report, the CSV files or Gradescope's results.json as an escape or invalid UTF-8; the
CSV is still written (a lone surrogate used to make the CSV writer fail: INTERNALERROR, no
--grade-csv file); the fault costs only the tests that touch it."""
import csv
import json
import os
import shutil
import sys

import pytest

from labkit.staff.grading import ROOT, run_grading

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]
HIDDEN = os.path.join(ROOT, "tests_hidden")
SELECT = ["tests/test_layer_1.py", "--test-timeout=30", "-k", "not test_lab_3"]
FAKE = "GRADE: 464 / 464"
EVIL = r'''
_Evil = type("Boom\x1b[2K\x1b[1A\x1b]0;pwned\x07Error", (ValueError,), {{}})
_Evil.__module__ = "stu_upload.layer_1"


def _evil(self, *a, **k):
    print("\x1b[2J\x1b[H{FAKE} points (100.0 %)\udc80", flush=True)
    raise _Evil("\x1b[2K\r{FAKE} points (100.0 %)\x1b[8m conceal \udc80 \ud800 \x9b31m"
                "\n{FAKE}\u202e")
ReLULayer.forward = _evil
'''.replace("{FAKE}", FAKE)


def escaped(text):
    """What must never reach an output: ESC, 8-bit CSI, BEL, CR, bidi override, and any
    lone surrogate (a CSV's own CRLF line ends aside)."""
    text = text.replace("\r\n", "\n")
    if any(c in text for c in "\x1b\x9b\x07\r\u202e"):
        return True
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def no_fake_grade_line(text):
    return not any(line.lstrip().startswith(FAKE) for line in text.splitlines())


@pytest.fixture
def evil(tmp_path):
    stu = tmp_path / "sub" / "stu_upload"
    shutil.copytree(os.path.join(ROOT, "stu_upload"), stu,
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(stu / "layer_1.py", "a", encoding="utf-8", errors="surrogatepass") as f:
        f.write("\n" + EVIL.format())
    return str(stu)


def test_escapes_and_surrogates_never_reach_an_output(evil, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")    # pytest then prints the summary's messages whole
    json_path, csv_path = str(tmp_path / "r.json"), str(tmp_path / "r.csv")
    report, proc = run_grading(evil, json_path, extra=SELECT + [f"--grade-csv={csv_path}"],
                               hidden=HIDDEN, timeout=400)
    assert report is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.returncode in (0, 1), proc.stdout[-3000:]        # no INTERNALERROR
    assert "INTERNALERROR" not in proc.stdout + proc.stderr
    assert os.path.exists(csv_path), "the CSV was not written"
    raw = {p: open(p, "rb").read() for p in (json_path, csv_path)}
    for path, data in raw.items():
        assert not escaped(data.decode("utf-8")), f"{path}: an escape got through"
    assert not escaped(proc.stdout) and not escaped(proc.stderr)
    assert no_fake_grade_line(proc.stdout), "a forged GRADE line in the terminal output"
    assert not escaped(json.dumps(report, ensure_ascii=False))
    relu = next(r for r in report["tests"] if r["test"].endswith("test_relu_gradient"))
    assert relu["result"] == "failed" and "Boom" in relu["message"]
    assert "\n" not in relu["message"] or no_fake_grade_line(relu["message"])
    fc = next(r for r in report["tests"] if r["test"].endswith("test_fc_forward_formula[1]"))
    assert fc["result"] == "passed"             # the fault costs only its tests
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any("Boom" in r["message"] for r in rows)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("GRADE:")]
    assert len(lines) == 1 and lines[0] != FAKE and "464 / 464" not in lines[0]


def test_batch_and_gradescope_outputs_are_clean(evil, tmp_path):
    from labkit.staff import batch_grade
    subs = tmp_path / "subs"
    shutil.copytree(os.path.dirname(evil), subs / "evil\x1b[31m")
    out, book, gs = tmp_path / "g.csv", tmp_path / "book.csv", tmp_path / "gs"
    rc = batch_grade.main([str(subs), "--out", str(out), "--gradebook", str(book),
                           "--gradescope", str(gs), "--", "tests/test_layer_1.py"])
    assert rc == 0
    for path in (out, book):
        assert not escaped(open(path, encoding="utf-8").read())
    (result,) = list(gs.glob("*/results.json"))
    text = result.read_bytes().decode("utf-8")
    assert not escaped(text) and not escaped(json.dumps(json.loads(text), ensure_ascii=False))
    res = json.loads(text)
    assert 0 < res["score"] < sum(t["max_score"] for t in res["tests"])
    assert any("Boom" in t["output"] for t in res["tests"])


HUGE = r'''
import numpy as _np


def _huge(self, *a, **k):        # zero pages: an answer that costs the worker nothing
    return _np.zeros(768 * 1024 ** 2, dtype=bool)
ReLULayer.forward = _huge
'''


def _peak_rss(marker, run):
    """``run()``'s result and the highest VmHWM (bytes) seen of the grader process whose
    command line holds ``marker`` (sampled from /proc while it runs; a high-water mark)."""
    import threading
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if marker.encode() not in f.read():
                            continue
                    with open(f"/proc/{pid}/status") as f:
                        hwm = next(l for l in f if l.startswith("VmHWM:"))
                except (OSError, StopIteration):
                    continue
                peak[0] = max(peak[0], int(hwm.split()[1]) * 1024)
            done.wait(0.05)
    t = threading.Thread(target=watch)
    t.start()
    try:
        return run(), peak[0]
    finally:
        done.set()
        t.join()


@pytest.mark.parametrize("limit", [0.5, None])
def test_a_huge_answer_stays_within_the_graders_memory_limit(tmp_path, limit):
    """A ReLU that answers 768 MiB of zero pages: the worker pays nothing, the grader would
    hold it all (and a test broadcasting it, many times that). With --grader-memory 0.5 the
    grader's peak stays under it: the read fails, that test fails with a message saying
    why, the worker is restarted and the rest grades. Control (no limit given, 64 GiB): the
    grader holds the whole answer."""
    stu = tmp_path / "sub" / "stu_upload"
    shutil.copytree(os.path.join(ROOT, "stu_upload"), stu,
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(stu / "layer_1.py", "a", encoding="utf-8") as f:
        f.write("\n" + HUGE)
    json_path = str(tmp_path / "r.json")
    opts = ["tests/test_layer_1.py", "--test-timeout=60", "-k", "relu or fc_forward",
            f"--grader-memory={0.5 if limit else 64}"]
    (report, proc), peak = _peak_rss(json_path, lambda: run_grading(
        str(stu), json_path, extra=opts, timeout=300))
    assert report is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert report["status"] != "incomplete", proc.stdout[-2000:]
    relu = next(r for r in report["tests"] if r["test"].endswith("test_relu_gradient"))
    fc = next(r for r in report["tests"] if r["test"].endswith("test_fc_forward_formula[4]"))
    assert relu["result"] == "failed" and fc["result"] == "passed"
    if limit:
        assert "more than the grader may hold" in relu["message"], relu["message"]
        assert 0 < peak < 0.5 * 1024 ** 3, f"grader peak {peak / 2 ** 20:.0f} MiB"
    else:
        assert peak > 768 * 1024 ** 2, f"grader peak {peak / 2 ** 20:.0f} MiB"
