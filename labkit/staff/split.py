"""One submission graded by several processes at once: its test files in ``parts`` groups,
each group a whole grading of its own (its own sandbox, uid, limits and worker: the same
protections as one run), the groups' reports merged into the report one run writes.

A grading is mostly one process waiting for the other (the grader for the student's worker,
and back), so one grading keeps about one core busy; two parts on two cores grade one
submission in about half the time. ``run_grading(..., split=N)`` uses it; a batch grading
several submissions at once (``--jobs``) has its cores busy already and grades each
submission in one part.

The groups are balanced by each test file's measured time (``WEIGHTS``: seconds in a full
grading of the reference on 2 cores; a file not listed counts ``DEFAULT_WEIGHT``): a
schedule only, never a grade.
"""
import glob
import os

from labkit.staff.points import HIDDEN_PREFIX, ROOT, Points

# seconds per test file in a full sandboxed grading of the reference (2 cores, profile of
# 2026-12-03; benchmarks/bench_grading.py --profile --full)
WEIGHTS = {
    "hidden/test_lab_3_2.py": 18.3, "tests/test_layer_2.py": 11.5,
    "tests/test_transfer_inputs.py": 9.8, "hidden/test_lab_3_1.py": 9.2,
    "tests/test_style_features.py": 8.3, "tests/test_vgg_cpu.py": 8.0,
    "tests/test_edges_commands.py": 6.4, "tests/test_cli_inputs.py": 6.0,
    "hidden/test_lab_3_3.py": 4.1, "tests/test_style_transfer.py": 3.3,
    "tests/test_vgg19_demo.py": 2.7, "tests/test_edges_checkpoint.py": 2.7,
    "tests/test_calibrate.py": 2.5, "tests/test_legacy.py": 2.2,
    "tests/test_edges_writer.py": 2.0, "tests/test_matfile.py": 1.6,
    "tests/test_edges_numbers.py": 1.2, "tests/test_layer_3.py": 0.7,
    "tests/test_layer_1.py": 0.5, "tests/test_images.py": 0.4,
    "hidden/test_hidden_layers.py": 0.3,
}
DEFAULT_WEIGHT = 2.0


def test_files(root=ROOT, hidden=None):
    """The test files a full grading runs: ``tests/test_*.py`` (staff-only files left out,
    as the grader leaves them out) and, with ``hidden``, the hidden folder's."""
    from labkit.staff.kit import is_staff_only
    files = sorted(f for f in glob.glob(os.path.join(root, "tests", "test_*.py"))
                   if not is_staff_only(f))
    if hidden:
        files += sorted(glob.glob(os.path.join(os.path.abspath(hidden), "test_*.py")))
    return files


def weight(path, hidden=None, weights=None):
    weights = WEIGHTS if weights is None else weights
    if hidden and os.path.abspath(path).startswith(os.path.abspath(hidden) + os.sep):
        key = HIDDEN_PREFIX + os.path.basename(path)
    else:
        key = os.path.relpath(path, ROOT).replace(os.sep, "/")
    return weights.get(key, DEFAULT_WEIGHT)


def plan(files, parts, hidden=None, weights=None):
    """``files`` in at most ``parts`` non-empty groups of about equal weight (the heaviest
    first, each to the lightest group; deterministic)."""
    groups = [[] for _ in range(max(1, min(parts, len(files))))]
    load = [0.0] * len(groups)
    for f in sorted(files, key=lambda f: (-weight(f, hidden, weights), f)):
        i = load.index(min(load))
        groups[i].append(f)
        load[i] += weight(f, hidden, weights)
    return [sorted(g) for g in groups if g]


def _order(row, manifest_tests):
    """A single run's order: the manifest's tests, results not in it, collection errors."""
    test = row["test"]
    return (0 if test in manifest_tests else 1 if "::" in test else 2, test)


def merge(reports, manifest_tests):
    """The report of one run from the reports of its parts (each lists only the tests it
    ran; a test listed twice keeps the row that ran it)."""
    rows = {}
    for report in reports:
        for row in report["tests"]:
            old = rows.get(row["test"])
            if old is None or (old["result"] == "missing" and row["result"] != "missing"):
                rows[row["test"]] = row
    rows = sorted(rows.values(), key=lambda r: _order(r, manifest_tests))
    first = reports[0]
    present = {exp: v["submitted"] for r in reports for exp, v in r["experiments"].items()}
    errors = {}
    for r in reports:
        errors.update(r["collection_errors"])
    sandbox = dict(first["sandbox"])
    if "events" in sandbox:
        sandbox["events"] = [e for r in reports for e in r["sandbox"].get("events", [])][-20:]
    hidden_run = any(r["hidden_run"] for r in reports)
    grade = Points.summarize(
        rows, present, stu_dir=first["stu_dir"], hidden_run=hidden_run,
        hidden_count=max(r["hidden_tests_not_run"] for r in reports),
        manifest=first["manifest"], init_error=next(
            (r["init_error"] for r in reports if r["init_error"]), first["init_error"]),
        sandbox=sandbox, collection_errors=errors)
    Points.finish(grade, incomplete=any(r.get("status", "incomplete") == "incomplete"
                                        for r in reports),
                  changed=[c for r in reports for c in r.get("integrity_changes", [])])
    outputs = [r["worker_output"] for r in reports if r.get("worker_output")]
    if any("worker_output" in r for r in reports):
        grade["worker_output"] = "\n".join(outputs)
    return grade
