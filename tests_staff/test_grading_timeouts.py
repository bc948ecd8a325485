"""The grader's time limits: a test's set-up (module fixtures shared by many tests, such as
exp 3.2's network) has its own limit, --setup-timeout (default 3 x --test-timeout), so a
loaded machine does not cost a correct submission every test of a module; the test's call
keeps --test-timeout."""
import json
import os
import subprocess
import sys

from labkit.staff.points import ROOT

CASE = os.path.join("tests_staff", "timeouts", "slow_setup_case.py")


def grade(tmp_path, *options, sleep=2.0):
    out = tmp_path / "grade.json"
    env = dict(os.environ, LABKIT_SLOW_SETUP_SECONDS=str(sleep))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "",
         "--grade", "--grade-manifest=none", f"--grade-json={out}", *options, CASE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    tests = json.loads(out.read_text())["tests"]
    (result,) = [t for t in tests if "slow_module_fixture" in t["test"]]
    return result


def test_setup_longer_than_the_test_limit_passes_within_the_setup_limit(tmp_path):
    result = grade(tmp_path, "--test-timeout=1")       # set-up 2 s, default limit 3 s
    assert result["result"] == "passed", result


def test_setup_beyond_the_setup_limit_fails_with_the_time_limit(tmp_path):
    # negative control: the same set-up with --setup-timeout=1 is stopped
    result = grade(tmp_path, "--test-timeout=1", "--setup-timeout=1")
    assert result["result"] == "timeout", result
