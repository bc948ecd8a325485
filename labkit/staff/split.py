"""One submission graded by several processes at once: its test files in ``parts`` groups,
each group a whole grading of its own (its own sandbox, uid, limits and worker: the same
protections as one run), the groups' reports merged into the report one run writes.

A grading is mostly one process waiting for the other (the grader for the student's worker,
and back), so one grading keeps about one core busy; two parts on two cores grade one
submission in about half the time. ``run_grading(..., split=N)`` uses it; a batch grading
several submissions at once (``--jobs``) has its cores busy already and grades each
submission in one part.

The groups are balanced by each test file's measured time in two gradings, of a correct
submission (``WEIGHTS``) and of the blank kit (``BLANK_WEIGHTS``): a submission's time per
file is roughly a mix of the two, and a plan balanced for both is balanced for every mix
(loads are linear in the weights). A file not listed counts ``DEFAULT_WEIGHT``. A schedule
only, never a grade.
"""
import glob
import os

from labkit.staff.points import HIDDEN_PREFIX, ROOT, Points

# seconds per test file in a full sandboxed grading on 2 cores, of the reference and of the
# blank kit (2026-12-03; benchmarks/bench_grading.py --profile --full [--stu KIT/stu_upload])
WEIGHTS = {
    "hidden/test_lab_3_2.py": 11.6, "hidden/test_lab_3_1.py": 8.8,
    "tests/test_layer_2.py": 8.8, "tests/test_transfer_inputs.py": 8.4,
    "tests/test_style_features.py": 6.8, "tests/test_vgg_cpu.py": 6.5,
    "tests/test_edges_commands.py": 4.9, "tests/test_cli_inputs.py": 4.7,
    "tests/test_style_transfer.py": 2.7, "hidden/test_lab_3_3.py": 2.2,
    "tests/test_edges_checkpoint.py": 2.1, "tests/test_vgg19_demo.py": 1.9,
    "tests/test_legacy.py": 1.8, "tests/test_edges_writer.py": 1.7,
    "tests/test_calibrate.py": 1.7, "tests/test_matfile.py": 1.3,
    "tests/test_edges_numbers.py": 0.9, "tests/test_layer_3.py": 0.5,
    "tests/test_images.py": 0.5, "tests/test_layer_1.py": 0.4,
    "hidden/test_hidden_layers.py": 0.2,
}
BLANK_WEIGHTS = {
    "tests/test_cli_inputs.py": 3.8, "tests/test_edges_commands.py": 3.0,
    "tests/test_transfer_inputs.py": 2.7, "hidden/test_lab_3_3.py": 2.3,
    "tests/test_legacy.py": 1.5, "hidden/test_lab_3_2.py": 1.3,
    "tests/test_edges_writer.py": 1.3, "tests/test_vgg_cpu.py": 1.1,
    "tests/test_matfile.py": 1.1, "hidden/test_lab_3_1.py": 1.1,
    "tests/test_edges_numbers.py": 0.8, "tests/test_style_transfer.py": 0.8,
    "tests/test_edges_checkpoint.py": 0.8, "tests/test_style_features.py": 0.7,
    "tests/test_calibrate.py": 0.6, "tests/test_vgg19_demo.py": 0.6,
    "tests/test_layer_2.py": 0.4, "tests/test_images.py": 0.3,
    "tests/test_layer_1.py": 0.1, "tests/test_layer_3.py": 0.1,
    "hidden/test_hidden_layers.py": 0.05,
}
PROFILES = (WEIGHTS, BLANK_WEIGHTS)
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


def module_id(path, hidden=None):
    """A test file's name in reports and the manifest: ``tests/test_x.py``, or
    ``hidden/test_y.py`` for a file of the hidden folder."""
    if hidden and os.path.abspath(path).startswith(os.path.abspath(hidden) + os.sep):
        return HIDDEN_PREFIX + os.path.basename(path)
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def weight(path, hidden=None, weights=None):
    weights = WEIGHTS if weights is None else weights
    return weights.get(module_id(path, hidden), DEFAULT_WEIGHT)


def graded_files(files, manifest_tests, hidden=None):
    """The files of ``files`` with a graded test in the manifest, or a test it does not
    list (--skip-ungraded: a file of ungraded checks only would run nothing)."""
    graded = {v.get("module") for v in manifest_tests.values() if v.get("graded", True)}
    listed = {v.get("module") for v in manifest_tests.values()}
    return [f for f in files if module_id(f, hidden) in graded or
            module_id(f, hidden) not in listed]


def plan(files, parts, hidden=None, profiles=PROFILES):
    """``files`` in at most ``parts`` non-empty groups whose slowest takes as little as can
    be found of the whole, in every profile at once (the worst of ``profiles``; greedy, then
    single moves and swaps while one helps; deterministic)."""
    files = sorted(files)
    n = max(1, min(parts, len(files)))
    w = [[weight(f, hidden, p) for p in profiles] for f in files]
    totals = [sum(col) or 1.0 for col in zip(*w)] if w else [1.0]

    def cost(assign):
        loads = [[0.0] * len(totals) for _ in range(n)]
        for i, g in enumerate(assign):
            for k, v in enumerate(w[i]):
                loads[g][k] += v
        # the worst profile's slowest part first, then the next (ties broken stably)
        return sorted((max(loads[g][k] for g in range(n)) / totals[k]
                       for k in range(len(totals))), reverse=True)

    assign, load = [0] * len(files), [0.0] * n
    share = [sum(v / t for v, t in zip(wi, totals)) for wi in w]
    for i in sorted(range(len(files)), key=lambda i: (-share[i], files[i])):
        g = load.index(min(load))
        assign[i], load[g] = g, load[g] + share[i]
    best, improved = cost(assign), True
    while improved:
        improved = False
        moves = [(i, g) for i in range(len(files)) for g in range(n) if g != assign[i]]
        swaps = [(i, j) for i in range(len(files)) for j in range(i + 1, len(files))
                 if assign[i] != assign[j]]
        for kind, a, b in [("move", i, g) for i, g in moves] + [("swap", i, j)
                                                              for i, j in swaps]:
            trial = list(assign)
            if kind == "move":
                trial[a] = b
            else:
                trial[a], trial[b] = trial[b], trial[a]
            if n > 1 and not all(g in trial for g in range(n)):
                continue                    # no part left empty
            c = cost(trial)
            if c < best:
                assign, best, improved = trial, c, True
                break
    groups = [[f for f, g in zip(files, assign) if g == k] for k in range(n)]
    return [g for g in groups if g]


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
