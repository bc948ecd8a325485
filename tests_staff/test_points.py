"""The rubric (labkit/staff/points.py) and the manifest built from it."""
import json
import os

from labkit.staff.points import LAB_RUBRIC, MANIFEST_NAME, ROOT, never_graded


def test_each_experiment_lab_rows_sum_to_100():
    totals = {}
    for _pattern, experiment, points in LAB_RUBRIC:
        totals[experiment] = totals.get(experiment, 0) + points
    assert totals == {"3.1": 100, "3.2": 100, "3.3": 100}, totals


def test_edge_tests_are_never_graded_and_student_tests_can_be():
    assert never_graded("tests/test_edges_writer.py::test_fifo_refused")
    assert never_graded("tests/test_edges_commands.py::test_exp_3_1_file_kinds")
    # negative controls: student-work tests stay gradable
    assert not never_graded("tests/test_layer_1.py::test_fc_forward")
    assert not never_graded("hidden/test_lab_3_1.py::test_conv_forward[0]")


def test_the_manifest_grades_no_edge_test():
    with open(os.path.join(ROOT, MANIFEST_NAME), encoding="utf-8") as f:
        tests = json.load(f)["tests"]
    wrongly = [t for t, v in tests.items() if v["graded"] and never_graded(t)]
    assert not wrongly, (f"{len(wrongly)} edge tests graded in {MANIFEST_NAME}, e.g. "
                         f"{wrongly[:3]}; rebuild it: python -m labkit.staff.grading manifest "
                         f"--hidden tests_hidden")
