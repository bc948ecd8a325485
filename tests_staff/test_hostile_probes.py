"""Probe-answering submissions graded through the sandbox (issue 19, item 3): the reference
solution whose forwards answer inputs within 1e-3 of the last one from a cache and whose
backwards return zeros (tests_staff/hostile/probe_attacks.py) gains no test over the same
submission without the cache (the control): before the fix the cache bought 26 points (7
tests, the 20-point lab row "backward to the image" among them). The reference still
passes each of those tests and every hidden test of the selection."""
import os
import sys

import pytest

from labkit.staff.grading import ROOT, run_grading
from tests_staff.hostile.probe_attacks import submission

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]
HIDDEN = os.path.join(ROOT, "tests_hidden")
SELECT = ["tests/test_layer_1.py", "tests/test_layer_2.py", "tests/test_layer_3.py",
          "tests/test_style_transfer.py", "-k", "not test_lab_3_1 and not test_lab_3_2",
          "--test-timeout=300"]
FEATURE_ROW = "hidden/test_lab_3_3.py::test_feature_network_forward_backward"
# the tests the cache bought before (26 points): the reference must still pass every one
BOUGHT = [FEATURE_ROW,
          "hidden/test_hidden_layers.py::test_conv_img2col_stride_larger_than_kernel",
          "hidden/test_hidden_layers.py::test_fc_wide_batch_gradient",
          "tests/test_layer_3.py::test_content_gradient_numeric",
          "tests/test_layer_3.py::test_style_gradient_numeric",
          "tests/test_style_transfer.py::test_network_backward_numeric",
          "tests/test_style_transfer.py::test_total_loss_image_gradient_numeric"]


def grade(stu, tmp_path, name):
    json_path = str(tmp_path / f"{name}.json")
    report, proc = run_grading(stu, json_path, extra=SELECT, hidden=HIDDEN, timeout=900)
    assert report is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert report["status"] == "graded", report["status"]
    return report


def passed(report):
    return {r["test"]: r["points"] for r in report["tests"]
            if r["graded"] and r["result"] == "passed"}


def test_answering_probes_from_a_cache_gains_nothing(tmp_path):
    ref = os.path.join(ROOT, "stu_upload")
    attack = grade(submission(ref, str(tmp_path / "attack"), cache=True), tmp_path, "attack")
    control = grade(submission(ref, str(tmp_path / "control"), cache=False), tmp_path,
                    "control")
    reference = grade(ref, tmp_path, "reference")
    gained = {t: p for t, p in passed(attack).items() if t not in passed(control)}
    print(f"PROBES attack {attack['points']:g}/{attack['max_points']:g}, control "
          f"{control['points']:g}, reference {reference['points']:g}; gained "
          f"{sum(gained.values()):g} mode={attack['sandbox']['mode']}")
    assert gained == {}, f"the cache bought {sum(gained.values()):g} points: {sorted(gained)}"
    ref_passed = passed(reference)
    assert [t for t in BOUGHT if t not in ref_passed] == []
    assert [t for t in BOUGHT if t in passed(attack)] == []
    hidden_gradients = [r["test"] for r in reference["tests"] if r["graded"] and r["hidden"]
                        and r["result"] != "missing"]       # missing: a stale manifest
    assert hidden_gradients and all(t in ref_passed for t in hidden_gradients)
    rows = {r["test"]: r for r in attack["tests"]}
    assert rows[FEATURE_ROW]["result"] != "passed"
    assert rows[FEATURE_ROW]["max_points"] > 0       # a lab row (20 points, shared)
