"""The Gradescope recipe (labkit/staff/gradescope/run_autograder), run against an emulated
``/autograder`` root: the script grades ``submission/`` sandboxed and always writes
``results/results.json``."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from labkit.staff.grading import ROOT

SCRIPT = os.path.join(ROOT, "labkit", "staff", "gradescope", "run_autograder")


def autograder(tmp_path, files):
    ag = tmp_path / "autograder"
    (ag / "submission").mkdir(parents=True)
    os.symlink(ROOT, ag / "source")             # the course repository, as setup.sh leaves it
    for name, text in files.items():
        path = ag / "submission" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "work").mkdir()
    return ag


def run(ag, tmp_path, **env):
    env = {**os.environ, "AUTOGRADER_ROOT": str(ag), "LABKIT_GS_WORK": str(tmp_path / "work"),
           "LABKIT_GS_PYTHON": sys.executable, "LABKIT_GS_HIDDEN": "", **env}
    env.pop("PYTEST_ADDOPTS", None)
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    with open(ag / "results" / "results.json", encoding="utf-8") as f:
        return json.load(f), r


@pytest.mark.slow                   # one sandboxed grading (about 12 s)
def test_gradescope_script_grades_the_submission(tmp_path):
    pkg = os.path.join(ROOT, "stu_upload")
    files = {f"stu_upload/{n}": open(os.path.join(pkg, n)).read()
             for n in os.listdir(pkg) if n.endswith(".py")}
    ag = autograder(tmp_path, files)
    res, r = run(ag, tmp_path, LABKIT_GS_PYTEST_ARGS="tests/test_layer_1.py")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    graded = [t for t in res["tests"] if t["max_score"]]
    assert graded and all(t["score"] == t["max_score"] for t in graded), res
    assert res["score"] == sum(t["max_score"] for t in graded) > 0
    assert all(t["name"].startswith("tests/test_layer_1.py::") for t in res["tests"])
    assert "public tests only" in res["output"]
    assert not os.path.exists("/autograder/results/results.json") or \
        os.path.getmtime("/autograder/results/results.json") < os.path.getmtime(
            ag / "results" / "results.json")


def test_gradescope_script_always_writes_a_result(tmp_path):
    ag = autograder(tmp_path, {"notes.txt": "no code here\n"})
    res, _ = run(ag, tmp_path)
    assert res["score"] == 0 and "Not graded" in res["output"] and "no stu_upload" in \
        res["output"]
    res, _ = run(ag, tmp_path, LABKIT_GS_PYTHON=str(tmp_path / "no-python"))
    assert res == {"score": 0, "output": "The autograder failed before grading; contact the "
                   "course staff.", "tests": []}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gradescope_setup_script_is_valid_bash():
    for name in ("setup.sh", "run_autograder"):
        r = subprocess.run(["bash", "-n", os.path.join(ROOT, "labkit", "staff", "gradescope",
                                                        name)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_gradescope_script_stops_clearly_without_its_sandbox(tmp_path):
    """A container where bubblewrap cannot make namespaces (simulated: CAP_SYS_ADMIN
    dropped): nothing is graded, and results.json says why (score 0)."""
    if os.geteuid() != 0 or not shutil.which("capsh"):
        pytest.skip("needs root and capsh")
    ag = autograder(tmp_path, {"stu_upload/layer_1.py": "X = 1\n"})
    env = {**os.environ, "AUTOGRADER_ROOT": str(ag), "LABKIT_GS_WORK": str(tmp_path / "work"),
           "LABKIT_GS_PYTHON": sys.executable, "LABKIT_GS_HIDDEN": ""}
    r = subprocess.run(["capsh", "--drop=cap_sys_admin", "--", "-c", f"bash '{SCRIPT}'"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(ag / "results" / "results.json", encoding="utf-8") as f:
        res = json.load(f)
    assert res["score"] == 0 and res["tests"] == []
    assert "sandbox mode bwrap" in res["output"] and "namespaces" in res["output"]
    assert not os.path.exists(tmp_path / "work" / "lk_subs")       # nothing was run
