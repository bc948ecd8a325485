"""Hostile submissions (tests_staff/hostile/attacks.py) graded through the sandbox: every
attack scores 0 or only what the submission really implements, staff files stay unchanged,
hidden test source never appears in any output, faults cost only the tests that touch them,
the grader writes its results and no process of the submission survives."""
import csv
import json
import os
import shutil
import sys

import pytest

from labkit.staff.grading import ROOT, run_grading
from labkit.staff.sandbox import integrity
from labkit.staff.sandbox.process import detect_mode
from tests_staff.hostile.attacks import CASES

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]
HIDDEN = os.path.join(ROOT, "tests_hidden")
SELECT = ["tests/test_layer_1.py", "--test-timeout=3", "--sandbox-memory=1",
          "-k", "not test_lab_3"]     # layer_1 and the hidden layer samples
HIDDEN_LINES = ["x = -np.abs(rng.standard_normal((2, 3))) - 0.1",
                "expected = (prob - np.eye(4)[label]) / 5"]
READS = {"import_reference", "copy_hidden_out", "leak_hidden_env"}   # need bwrap to block
FAULT_FREE = "tests/test_layer_1.py::test_fc_forward_formula[1]"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from labkit.staff.kit import write_kit
    kit = tmp_path_factory.mktemp("kit")
    write_kit(str(kit / "k"), root=ROOT)
    return {"kit": str(kit / "k" / "stu_upload"), "ref": os.path.join(ROOT, "stu_upload")}


def plant(bases, tmp_path, base, file, code, mark, json_path):
    stu = tmp_path / "sub" / "stu_upload"
    shutil.copytree(bases[base], stu, ignore=shutil.ignore_patterns("__pycache__"))
    site = integrity.site_dirs()[0]
    code = code.format(ROOT=ROOT, JSON=json_path, MARK=mark, SITE=site)
    with open(stu / file, "a", encoding="utf-8") as f:
        f.write("\n" + code)
    return str(stu)


def processes_with(mark):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if mark.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("case,base,file,code,expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_submission(bases, tmp_path, case, base, file, code, expected):
    mode = detect_mode("auto")
    if case in READS and mode != "bwrap":
        pytest.skip(f"mode {mode}: reading world-readable staff files is not prevented "
                    f"(README, 'For course staff'); bubblewrap blocks it")
    mark = f"labkit_hostile_{case}_{os.getpid()}"
    json_path = str(tmp_path / "report.json")
    stu = plant(bases, tmp_path, base, file, code, mark, json_path)
    before = integrity.fingerprint(ROOT, HIDDEN)
    report, proc = run_grading(stu, json_path, extra=SELECT, hidden=HIDDEN, timeout=240)
    after = integrity.fingerprint(ROOT, HIDDEN)
    assert integrity.changes(before, after) == []
    assert report is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.returncode in (0, 1), proc.stdout[-2000:]        # no INTERNALERROR
    assert report["status"] == "graded" and report["points"] <= report["max_points"]
    outputs = proc.stdout + proc.stderr + json.dumps(report)
    for line in HIDDEN_LINES:
        assert line not in outputs, f"hidden test source leaked: {line}"
    assert "PYTEST_CURRENT_TEST" not in outputs.replace("ENV=None", "")
    assert not processes_with(mark), "a process of the submission survived its grading"
    assert not os.path.exists(f"/tmp/{mark}")
    assert not os.path.exists(os.path.join(integrity.site_dirs()[0], mark + ".pth"))
    results = {r["test"]: r for r in report["tests"] if r["graded"]}
    if case in ("zero_layers", "os_exit_import", "sys_exit_import"):
        # the attack is in layer_1.py; layer_2.py is the reference's, loaded on its own (a
        # broken file costs only its tests): its conv point is genuine
        report = dict(report, points=sum(r["points"] for t, r in results.items()
                                         if "conv" not in t))
    got = ("zero" if report["points"] == 0 else
           "full" if report["points"] == report["max_points"] else "partial")
    print(f"HOSTILE {case:<22} expected {expected:<8} got {got:<8} "
          f"{report['points']:g}/{report['max_points']:g} mode={report['sandbox']['mode']}")
    assert got == expected, ("passed: " + ", ".join(t for t, r in results.items()
                                                    if r["result"] == "passed"))
    if expected == "partial" and case != "leak_hidden_env":    # that one breaks FC, not ReLU
        assert results[FAULT_FREE]["result"] == "passed"
        relu = results["tests/test_layer_1.py::test_relu_gradient"]
        assert relu["result"] != "passed"
        if case.startswith("loop"):
            assert "time limit" in relu["message"]
        if case == "alloc_3gib":
            assert "memory limit" in relu["message"]
    if case == "leak_hidden_env":
        fc = results["tests/test_layer_1.py::test_fc_gradients[1]"]["message"]
        assert "ENV=None" in fc


def test_batch_blank_kit_next_to_an_attack_scores_zero(bases, tmp_path):
    subs = tmp_path / "subs"
    for name, base, code in (("a_attacker", "kit", CASES[0][3]), ("b_blank", "kit", ""),
                             ("c_reference", "ref", "")):
        dest = subs / name / "stu_upload"
        shutil.copytree(bases[base], dest, ignore=shutil.ignore_patterns("__pycache__"))
        with open(dest / "__init__.py", "a", encoding="utf-8") as f:
            f.write(code.format(ROOT=ROOT))
    from labkit.staff import batch_grade
    out, book, gs = tmp_path / "g.csv", tmp_path / "book.csv", tmp_path / "gs"
    rc = batch_grade.main([str(subs), "--out", str(out), "--gradebook", str(book),
                           "--gradescope", str(gs), "--jobs", "2", "--",
                           "tests/test_layer_1.py"])
    assert rc == 0
    rows = {r["student"]: r for r in csv.DictReader(open(out, encoding="utf-8"))}
    assert rows["a_attacker"]["points"] == "0" and rows["b_blank"]["points"] == "0"
    assert rows["c_reference"]["points"] == rows["c_reference"]["max_points"] != "0"
    book_rows = {r["student"]: r for r in csv.DictReader(open(book, encoding="utf-8"))}
    assert book_rows["c_reference"]["exp_3.1"] == rows["c_reference"]["points"]
    res = json.load(open(gs / "c_reference" / "results.json", encoding="utf-8"))
    assert res["score"] == float(rows["c_reference"]["points"])
    assert {"name", "score", "max_score", "output", "visibility"} <= set(res["tests"][0])


def test_batch_checks_arguments_before_grading(tmp_path, capsys):
    from labkit.staff import batch_grade
    (tmp_path / "subs" / "x").mkdir(parents=True)
    assert batch_grade.main([str(tmp_path / "subs"), "--out", str(tmp_path / "o.csv"),
                             "--timeout", "-5"]) == 2
    assert "--timeout -5: must be > 0" in capsys.readouterr().err
    assert batch_grade.main([str(tmp_path / "subs"), "--out", "/proc/no/o.csv"]) == 2
    assert "cannot write there" in capsys.readouterr().err


# ------------------------------------------------------------------ red team: exp 3.2 fakes
LAB_3_2 = ["-k", "test_lab_3_1 or test_lab_3_2", "--test-timeout=120",
           os.path.join(ROOT, "tests", "test_vgg19_demo.py")]


def _lab_results(report):
    return {r["test"]: r for r in report["tests"] if r["graded"] and r["hidden"]}


def test_fake_get_top5_on_blank_kit_scores_nothing(bases, tmp_path):
    """A blank kit whose vgg19_demo.py does no pycnml work at all: its get_top5(label)
    answers (True, True) for the label the test hands it and bumps its own forward_count;
    the test reads both from the student's object."""
    from tests_staff.hostile.attacks import FAKE_DLP
    json_path = str(tmp_path / "report.json")
    stu = plant(bases, tmp_path, "kit", "vgg19_demo.py", FAKE_DLP, "x", json_path)
    report, proc = run_grading(stu, json_path, extra=LAB_3_2, hidden=HIDDEN, timeout=400)
    assert report is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    lab = _lab_results(report)
    assert lab["hidden/test_lab_3_2.py::test_get_top5_runs_forward_itself"]["result"] != \
        "passed", "get_top5 credited to a stub that never ran a network"
    assert report["experiments"]["3.2"]["lab_points"] == 0


def test_exp_3_2_not_credited_by_replaying_exp_3_1s_probabilities(bases, tmp_path):
    """The reference's exp 3.1 (a correct float tail) plus a vgg19_demo.py without pycnml:
    layer_1's softmax saves the probabilities that hidden test_classifies_the_cat computes
    from the grader's reference pool5 (in $HOME, which outlives the test); the fake DLP net
    replays them in test_dlp_classifies_like_the_cpu (correlation 1, the right class)."""
    from tests_staff.hostile.attacks import FAKE_DLP, SPY_SOFTMAX
    json_path = str(tmp_path / "report.json")
    stu = plant(bases, tmp_path, "ref", "layer_1.py", SPY_SOFTMAX, "x", json_path)
    with open(os.path.join(stu, "vgg19_demo.py"), "w", encoding="utf-8") as f:
        f.write(FAKE_DLP.replace("self.net.out = _np.zeros(1000)\n        self.net.out[label]"
                                 " = 1.0\n        return 0.0, True, True",
                                 "o = _np.argsort(-self.net.out)\n        return 0.0, "
                                 "bool(o[0] == label), bool(label in o[:5])"))
    report, proc = run_grading(stu, json_path, extra=LAB_3_2, hidden=HIDDEN, timeout=400)
    assert report is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    lab = _lab_results(report)
    assert lab["hidden/test_lab_3_1.py::test_classifies_the_cat"]["result"] == "passed"
    assert lab["hidden/test_lab_3_2.py::test_dlp_classifies_like_the_cpu"]["result"] != \
        "passed", "exp 3.2 credited to a submission that never built a pycnml network"
