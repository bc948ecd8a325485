"""The profiling plugin (labkit/staff/profile.py) on a small sandboxed grading: it sees the
worker start, the calls into student code, their bytes and a driver subprocess."""
import json
import os
import subprocess
import sys

import pytest

from labkit.staff.grading import ROOT


@pytest.mark.slow                   # one small sandboxed grading
def test_profile_plugin_attributes_the_time(tmp_path):
    out = tmp_path / "prof.json"
    tests = ["tests/test_layer_1.py::test_backward_checks_top_diff_shape",
             "tests/test_vgg_cpu.py::test_cli_demo_runs_without_weights"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--stu-dir={os.path.join(ROOT, 'stu_upload')}", "-p",
                        "labkit.staff.profile", f"--grade-profile={out}", *tests],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    prof = json.loads(out.read_text())
    layer, driver = (prof["tests"][t] for t in tests)
    assert layer["student_calls"] > 0 and layer["bytes_out"] > 0 and layer["bytes_in"] > 0
    assert layer["drivers"] == 0 and driver["drivers"] == 1 and driver["driver_wall"] > 0
    assert prof["total"]["worker_starts"] == 1
    for d in (layer, driver):
        parts = d["worker_start"] + d["student"] + d["driver_wall"] + d["grader"] + sum(
            d["fixtures"].values())
        assert parts == pytest.approx(d["wall"], rel=0.05, abs=0.05)
