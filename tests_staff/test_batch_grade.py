"""batch_grade at course scale: shards merged equal one run byte for byte, one submission never
breaks the batch, damaged or oversized zips are that student's row.

Fast: the grader itself (``run_grading``, a sandboxed pytest per student) is replaced by a fake
that scores a submission from its files, so these tests check the batch's own logic; the real
grading of a batch is tested in test_teaching_workflow.py and test_hostile.py (slow)."""
import io
import json
import os
import subprocess
import zipfile

import pytest

from labkit.staff import batch_grade

STUDENTS = ["ann", "bo", "cy", "dee", "ed", "fay", "gus"]


def fake_run_grading(stu_dir, json_path, extra=(), hidden=None, timeout=None, cwd=None,
                     sandbox=None, split=1, threads=None, skip_ungraded=False):
    """A report like the grader's, from ``SCORE = n`` in the submission's layer_1.py."""
    with open(os.path.join(stu_dir, "layer_1.py"), encoding="utf-8") as f:
        text = f.read()
    if "RECURSE" in text:
        raise RecursionError("maximum recursion depth exceeded")
    if "MEMORY" in text:
        raise MemoryError()
    if "CRASH" in text:
        return None, subprocess.CompletedProcess([], 3, "", "INTERNALERROR boom\n")
    score = int(text.split("SCORE = ")[1].split()[0])
    tests = [{"test": f"tests/test_layer_1.py::test_{i}", "module": "tests/test_layer_1.py",
              "graded": True, "category": "beyond", "experiment": "3.1",
              "hidden": False, "points": 1 if i < score else 0, "max_points": 1,
              "result": "passed" if i < score else "failed",
              "message": "" if i < score else f"assertion failed: case {i}"}
             for i in range(4)]
    tests.append({"test": "hidden/test_lab_3_1.py::test_classifies_the_cat",
                  "module": "hidden/test_lab_3_1.py", "graded": True, "category": "lab",
                  "experiment": "3.1", "hidden": True, "points": 20 if score > 2 else 0,
                  "max_points": 20, "result": "passed" if score > 2 else "failed",
                  "message": ""})
    points = sum(t["points"] for t in tests)
    report = {"stu_dir": stu_dir, "points": points, "max_points": 24,
              "percent": round(100.0 * points / 24, 1), "failed": sum(
                  t["result"] != "passed" for t in tests), "collection_errors": {},
              "init_error": None, "hidden_run": True, "status": "graded",
              "verdict": f"{points} points", "tests": tests}
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(report, f)
    with open(json_path, encoding="utf-8") as f:
        return json.load(f), subprocess.CompletedProcess([], 0, "", "")


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(batch_grade, "run_grading", fake_run_grading)


def make_subs(root, students=STUDENTS):
    subs = root / "subs"
    subs.mkdir()
    for i, name in enumerate(students):
        code = f"SCORE = {i % 5}\n"
        if i % 2:           # half as zips, half as folders
            with zipfile.ZipFile(subs / f"{name}.zip", "w") as zf:
                zf.writestr(f"{name}_lab3/stu_upload/layer_1.py", code)
        else:
            (subs / name / "stu_upload").mkdir(parents=True)
            (subs / name / "stu_upload" / "layer_1.py").write_text(code)
    return subs


def outputs(folder):
    return ["--out", str(folder / "grades.csv"), "--gradebook", str(folder / "book.csv"),
            "--reports", str(folder / "reports"), "--gradescope", str(folder / "gs")]


def tree(folder):
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


def test_three_shards_merged_equal_one_run_byte_for_byte(fake, tmp_path, capsys):
    subs = make_subs(tmp_path)
    single, merged = tmp_path / "single", tmp_path / "merged"
    assert batch_grade.main([str(subs), "--sandbox", "none", *outputs(single)]) == 0
    shares = []
    for k in (1, 2, 3):
        res = tmp_path / f"res{k}"
        assert batch_grade.main([str(subs), "--sandbox", "none", "--shard", f"{k}/3",
                                 "--results", str(res)]) == 0
        shares.append([r["row"]["student"] for r in json.loads(
            (res / f"shard-{k}-of-3.json").read_text())["results"]])
    # a deterministic partition by sorted name
    assert shares == [["ann", "dee", "gus"], ["bo", "ed"], ["cy", "fay"]]
    assert batch_grade.main(["merge", *(str(tmp_path / f"res{k}") for k in (3, 1, 2)),
                             *outputs(merged)]) == 0
    one, many = tree(single), tree(merged)
    assert sorted(one) == sorted(many) and len(one) == 2 + 2 * len(STUDENTS)
    for name in one:
        assert one[name] == many[name], name
    rows = one["grades.csv"].decode().splitlines()
    assert rows[1].startswith("ann,0,24,0.0,5,graded") and rows[4].startswith("dee,23,24")


def test_merge_refuses_an_incomplete_or_mixed_set(fake, tmp_path, capsys):
    subs = make_subs(tmp_path)
    for k in (1, 2):
        assert batch_grade.main([str(subs), "--sandbox", "none", "--shard", f"{k}/3",
                                 "--results", str(tmp_path / "res")]) == 0
    capsys.readouterr()
    out = str(tmp_path / "g.csv")
    assert batch_grade.main(["merge", str(tmp_path / "res"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard 3/3 missing" in err and not os.path.exists(out)
    res = tmp_path / "res"
    twice = res / "shard-1-of-3.json"
    assert batch_grade.main(["merge", str(res), str(twice), "--out", out]) == 2
    assert "given twice" in capsys.readouterr().err
    (tmp_path / "subs" / "zed").mkdir()             # another batch: one more student
    (tmp_path / "subs" / "zed" / "layer_1.py").write_text("SCORE = 1\n")
    assert batch_grade.main([str(subs), "--sandbox", "none", "--shard", "3/3",
                             "--results", str(res)]) == 0
    capsys.readouterr()
    assert batch_grade.main(["merge", str(res), "--out", out]) == 2
    assert "another batch" in capsys.readouterr().err
    (res / "junk.json").write_text("{}")
    assert batch_grade.main(["merge", str(res / "junk.json"), "--out", out]) == 2
    assert "not a shard result" in capsys.readouterr().err
    assert batch_grade.main(["merge", str(tmp_path / "nowhere"), "--out", out]) == 2


@pytest.mark.parametrize("shard", ["0/3", "4/3", "3", "a/b", "1/0", ""])
def test_bad_shard_is_one_message_before_grading(fake, tmp_path, capsys, shard):
    subs = make_subs(tmp_path, ["ann"])
    assert batch_grade.main([str(subs), "--sandbox", "none", "--shard", shard,
                             "--out", str(tmp_path / "g.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shard" in err and not (tmp_path / "g.csv").exists()


def test_out_or_results_required(fake, tmp_path, capsys):
    subs = make_subs(tmp_path, ["ann"])
    assert batch_grade.main([str(subs), "--sandbox", "none"]) == 2
    assert "--out" in capsys.readouterr().err


def deep_zip(path, depth):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("/".join(["d"] * depth) + "/stu_upload/layer_1.py", "SCORE = 1\n")


def test_one_submission_never_breaks_the_batch(fake, tmp_path, capsys):
    subs = make_subs(tmp_path, ["ann", "bo"])
    deep_zip(subs / "deep.zip", 1100)                   # RecursionError in a recursive walk
    with zipfile.ZipFile(subs / "many.zip", "w") as zf:
        for i in range(batch_grade.MAX_ENTRIES + 1):
            zf.writestr(f"stu_upload/f{i}.txt", "")
    good = io.BytesIO()                                 # a damaged zip: CRC error inside
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("stu_upload/layer_1.py", "SCORE = 4\n" * 20)
    data = good.getvalue().replace(b"SCORE = 4\nSCORE", b"SCORE = 4\nSCXRE", 1)
    (subs / "crc.zip").write_bytes(data)
    (subs / "trunc.zip").write_bytes(good.getvalue()[:60])      # truncated: not a zip
    for name, code in (("rec", "RECURSE"), ("mem", "MEMORY"), ("crash", "CRASH")):
        (subs / name / "stu_upload").mkdir(parents=True)
        (subs / name / "stu_upload" / "layer_1.py").write_text(code)
    deep = subs / "deepdir"                             # a folder nested too deep
    (deep / "stu_upload").mkdir(parents=True)
    (deep / "stu_upload" / "layer_1.py").write_text("SCORE = 1\n")
    os.makedirs(os.path.join(deep, *["x"] * (batch_grade.MAX_DEPTH + 2)))
    assert batch_grade.main([str(subs), "--sandbox", "none", "--jobs", "2",
                             *outputs(tmp_path / "o")]) == 0
    rows = {r.split(",")[0]: r for r in
            (tmp_path / "o" / "grades.csv").read_text().splitlines()[1:]}
    assert rows["ann"].startswith("ann,0,24") and rows["bo"].startswith("bo,1,24")
    expect = {"deep": "deeper than 32 folders", "many": "more than 10000",
              "crc": "damaged zip file (BadZipFile", "trunc": "not a valid zip file",
              "rec": "grading error: RecursionError", "mem": "grading error: MemoryError",
              "crash": "grading crashed: INTERNALERROR boom",
              "deepdir": "nested deeper than 32 folders"}
    for name, why in expect.items():
        assert ",error," in rows[name] and why in rows[name], rows[name]
    gs = json.loads((tmp_path / "o" / "gs" / "rec" / "results.json").read_text())
    assert gs["score"] == 0 and "RecursionError" in gs["output"]


def test_zip_limits_are_exact(tmp_path):
    deep_zip(tmp_path / "ok.zip", batch_grade.MAX_DEPTH - 2)    # d/.../stu_upload/layer_1.py
    batch_grade.safe_extract(str(tmp_path / "ok.zip"), str(tmp_path / "x"))
    deep_zip(tmp_path / "no.zip", batch_grade.MAX_DEPTH - 1)
    with pytest.raises(batch_grade.SubmissionError, match="deeper"):
        batch_grade.safe_extract(str(tmp_path / "no.zip"), str(tmp_path / "y"))


def test_progress_line_estimates_time_left():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    out = Tty()
    p = batch_grade.Progress(4, out)
    p.start -= 60                   # one minute in
    p.update({"status": "graded"})
    p.update({"status": "error"})
    line = out.getvalue().split("\r")[-1]
    assert "graded 2/4 (1 not graded), 1m00s elapsed, about 1m00s left" in line
    quiet = io.StringIO()
    batch_grade.Progress(2, quiet).update({"status": "graded"})
    assert quiet.getvalue() == ""          # not a terminal: no progress line
