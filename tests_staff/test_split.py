"""labkit/staff/split.py: one submission graded in parts at once (issue 22: a full grade
keeps one core busy; two parts use two). The merged report is the report of one run."""
import json
import os
import shutil

import pytest

from labkit.staff import split
from labkit.staff.grading import ROOT, run_grading
from labkit.staff.points import Points

HIDDEN = os.path.join(ROOT, "tests_hidden")


def test_plan_puts_every_file_in_one_part_balanced_and_deterministic():
    files = split.test_files(ROOT, HIDDEN)
    assert any("tests_hidden" in f for f in files) and not any("tests_staff" in f
                                                                for f in files)
    parts = split.plan(files, 2, HIDDEN)
    assert sorted(f for p in parts for f in p) == sorted(files)
    assert len(parts) == 2
    for profile in split.PROFILES:      # balanced for a correct submission and a blank kit
        loads = [sum(split.weight(f, HIDDEN, profile) for f in p) for p in parts]
        assert max(loads) - min(loads) <= 0.1 * sum(loads), (profile is split.WEIGHTS, loads)

    def blank_gap(plan):
        loads = [sum(split.weight(f, HIDDEN, split.BLANK_WEIGHTS) for f in p) for p in plan]
        return max(loads) - min(loads)
    # control: planned for the reference's times only, the blank kit's parts are not even
    assert blank_gap(split.plan(files, 2, HIDDEN, profiles=(split.WEIGHTS,))) > \
        2 * blank_gap(parts)
    assert parts == split.plan(list(reversed(files)), 2, HIDDEN)
    assert split.plan(files[:1], 4, HIDDEN) == [files[:1]]
    # control: the weights decide (all equal: the two heaviest files may share a part)
    heavy = ["tests_hidden/test_lab_3_2.py", "tests/test_layer_2.py"]
    parts = split.plan([os.path.join(ROOT, f) for f in heavy] +
                       [os.path.join(ROOT, "tests/test_images.py")], 2, HIDDEN)
    assert not any(all(os.path.join(ROOT, f) in p for f in heavy) for p in parts)


def _row(test, result, max_points=1, experiment="3.1"):
    return {"test": test, "module": test.partition("::")[0], "graded": True,
            "category": "lab", "experiment": experiment, "hidden": test.startswith("hidden/"),
            "points": max_points if result == "passed" else 0, "max_points": max_points,
            "result": result, "message": ""}


def _report(rows, status="graded", hidden_run=True, **extra):
    grade = Points.summarize(rows, {"3.1": True}, stu_dir="/s", hidden_run=hidden_run,
                             hidden_count=0 if hidden_run else 2, manifest=True,
                             init_error=None, sandbox={"mode": "bwrap", "events": []},
                             collection_errors={})
    grade["verdict"] = Points.verdict(grade)
    grade["status"] = status
    grade.update(extra)
    return grade


def test_merge_keeps_each_tests_row_once_in_a_single_runs_order():
    a = _report([_row("tests/test_a.py::t1", "passed"), _row("tests/test_a.py::t2", "failed")],
                hidden_run=False)
    b = _report([_row("hidden/test_h.py::h1", "passed", 2),
                 _row("tests/test_b.py::x", "missing")])
    c = _report([_row("tests/test_b.py::x", "passed")])
    manifest = {t: {} for t in ("hidden/test_h.py::h1", "tests/test_a.py::t1",
                                "tests/test_a.py::t2", "tests/test_b.py::x")}
    merged = split.merge([a, b, c], manifest)
    single = _report([_row("hidden/test_h.py::h1", "passed", 2),
                      _row("tests/test_a.py::t1", "passed"),
                      _row("tests/test_a.py::t2", "failed"),
                      _row("tests/test_b.py::x", "passed")])
    assert json.dumps(merged) == json.dumps(single)         # keys, order and values
    assert (merged["points"], merged["max_points"], merged["failed"]) == (4, 5, 1)


def test_merge_an_unfinished_or_tampered_part_marks_the_whole():
    a = _report([_row("tests/test_a.py::t1", "passed")])
    b = _report([_row("tests/test_b.py::t1", "passed")], status="incomplete")
    merged = split.merge([a, b], {})
    assert merged["status"] == "incomplete" and merged["verdict"].startswith(
        "grading did not finish")
    c = _report([_row("tests/test_b.py::t1", "passed")], status="integrity-error",
                integrity_changes=["changed: /x/grading.py"])
    merged = split.merge([a, c], {})
    assert merged["status"] == "integrity-error" and merged["points"] == 0
    assert merged["integrity_changes"] == ["changed: /x/grading.py"]
    assert split.merge([a, _report([_row("tests/test_b.py::t1", "passed")])], {})[
        "status"] == "graded"       # control


@pytest.mark.slow
def test_a_split_grading_writes_the_report_of_one_run(tmp_path):
    """A submission without exp 3.2's file and with a broken ReLU, graded on public and
    hidden files in one run and in two parts: the same report (in-process grading; the
    parts are gradings of their own, so the sandbox changes nothing here)."""
    stu = tmp_path / "stu_upload"
    shutil.copytree(os.path.join(ROOT, "stu_upload"), stu,
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.remove(stu / "vgg19_demo.py")
    src = (stu / "layer_1.py").read_text()
    assert "np.maximum(input, 0)" in src
    (stu / "layer_1.py").write_text(src.replace("np.maximum(input, 0)", "input", 1))
    files = ["tests/test_layer_1.py", "tests/test_edges_numbers.py",
             "tests/test_vgg19_demo.py", os.path.join(HIDDEN, "test_hidden_layers.py")]
    reports = {}
    for n in (1, 2):
        report, proc = run_grading(str(stu), str(tmp_path / f"r{n}.json"), hidden=HIDDEN,
                                   sandbox="off", split=n, extra=files, timeout=900)
        assert report is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
        with open(tmp_path / f"r{n}.json", encoding="utf-8") as f:
            reports[n] = f.read()
    one = json.loads(reports[1])
    assert one["failed"] > 0 and one["experiments"]["3.2"]["submitted"] is False
    assert one["hidden_run"] and any(r["hidden"] for r in one["tests"])
    assert reports[1] == reports[2]


def test_each_part_runs_only_its_files(monkeypatch, tmp_path):
    """The commands of a split grading: every file named runs in exactly one part, and
    one file named is one grading of that file (found by the Gradescope script's test: the
    file was dropped from the command and the whole suite ran)."""
    from labkit.staff import grading_cli
    seen = []

    def fake(jobs, cwd, env, timeout):
        import subprocess
        seen.append([cmd for cmd, _ in jobs])
        return [subprocess.CompletedProcess(cmd, 0, "", "") for cmd, _ in jobs]
    monkeypatch.setattr(grading_cli, "_run_parts", fake)
    one = os.path.join(ROOT, "tests", "test_layer_1.py")
    two = os.path.join(ROOT, "tests", "test_layer_3.py")
    for files in ([one], [one, two]):
        del seen[:]
        report, _ = run_grading(os.path.join(ROOT, "stu_upload"), str(tmp_path / "r.json"),
                                extra=["--test-timeout", "30", *files], split=2)
        assert report is None               # (nothing ran: no report)
        (cmds,) = seen
        named = [[a for a in cmd if a.endswith(".py") and "/tests/" in a] for cmd in cmds]
        assert sorted(f for n in named for f in n) == sorted(files)
        assert len(cmds) == len(files) and all(len(n) == 1 for n in named)
        assert all("--test-timeout=30" in cmd or "30" in cmd for cmd in cmds)


def test_skip_ungraded_names_only_files_with_graded_tests(monkeypatch, tmp_path):
    """--skip-ungraded: files of ungraded checks only (test_images, test_legacy, ...) are
    not even named, in one part and in two; a file the manifest does not list still runs."""
    from labkit.staff import grading_cli
    seen = []

    def fake(jobs, cwd, env, timeout):
        import subprocess
        seen.append([cmd for cmd, _ in jobs])
        return [subprocess.CompletedProcess(cmd, 0, "", "") for cmd, _ in jobs]
    monkeypatch.setattr(grading_cli, "_run_parts", fake)
    with open(os.path.join(ROOT, "tests", "grading_manifest.json"), encoding="utf-8") as f:
        tests = json.load(f)["tests"]
    only_ungraded = {v["module"] for v in tests.values()} - {
        v["module"] for v in tests.values() if v["graded"]}
    assert {"tests/test_images.py", "tests/test_legacy.py"} <= only_ungraded
    for split_n in (1, 2):
        del seen[:]
        run_grading(os.path.join(ROOT, "stu_upload"), str(tmp_path / "r.json"),
                    hidden=HIDDEN, split=split_n, skip_ungraded=True)
        (cmds,) = seen
        assert all("--skip-ungraded" in cmd for cmd in cmds)
        named = {split.module_id(a, HIDDEN) for cmd in cmds for a in cmd if a.endswith(".py")
                 and os.path.isabs(a)}
        graded = {v["module"] for v in tests.values() if v["graded"]}
        assert named == graded, (split_n, named ^ graded)
    new = str(tmp_path / "test_new.py")
    assert split.graded_files([new], tests, HIDDEN) == [new]        # not in the manifest
    # control: without the option every file runs
    del seen[:]
    run_grading(os.path.join(ROOT, "stu_upload"), str(tmp_path / "r.json"), hidden=HIDDEN,
                split=2)
    named = {split.module_id(a, HIDDEN) for cmd in seen[0] for a in cmd if a.endswith(".py")
             and os.path.isabs(a)}
    assert only_ungraded <= named and not any("--skip-ungraded" in c for c in seen[0])


@pytest.mark.slow
def test_skip_ungraded_gives_the_same_grade(tmp_path):
    """A submission with a broken ReLU graded with and without --skip-ungraded (sandboxed,
    in one part and in two): the same graded rows and points, byte for byte; only the
    ungraded checks are gone."""
    stu = tmp_path / "stu_upload"
    shutil.copytree(os.path.join(ROOT, "stu_upload"), stu,
                    ignore=shutil.ignore_patterns("__pycache__"))
    src = (stu / "layer_1.py").read_text()
    (stu / "layer_1.py").write_text(src.replace("np.maximum(input, 0)", "input", 1))
    files = ["tests/test_layer_1.py", "tests/test_images.py", "tests/test_legacy.py",
             "tests/test_calibrate.py"]
    reports = {}
    for skip, n in ((False, 1), (True, 1), (True, 2)):
        report, proc = run_grading(str(stu), str(tmp_path / "r.json"), split=n, extra=files,
                                   skip_ungraded=skip, timeout=900)
        assert report is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
        reports[skip, n] = report
        if skip:
            assert "not run (--skip-ungraded)" in proc.stdout
    full = reports[False, 1]
    assert full["failed"] > 0 and any(not r["graded"] for r in full["tests"])
    for key in ((True, 1), (True, 2)):
        got = reports[key]
        assert not any(not r["graded"] for r in got["tests"]), key
        assert [r for r in got["tests"]] == [r for r in full["tests"] if r["graded"]], key
        for k in ("points", "max_points", "lab_points", "beyond_points", "status"):
            assert got[k] == full[k], (key, k)


def test_skip_ungraded_needs_the_manifest(tmp_path):
    """Without the manifest nothing says which tests are graded: refused, not guessed."""
    import subprocess
    import sys
    from labkit.staff.grade import pytest_command
    cmd = pytest_command(["-q", "-p", "no:cacheprovider", "--sandbox=off",
                          f"--stu-dir={os.path.join(ROOT, 'stu_upload')}",
                          "--grade-manifest=none", "--skip-ungraded"],
                         [os.path.join(ROOT, "tests", "test_layer_3.py")], python=sys.executable)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 4 and "--skip-ungraded needs the grading manifest" in r.stderr, \
        r.stdout[-1000:] + r.stderr[-1000:]


def test_grade_json_is_written_when_the_terminal_pipe_closes(tmp_path):
    """`grade ... --grade-json r.json | head -1`: the pipe closes before the grade table;
    the report is still written, with no warning or traceback."""
    import subprocess
    import sys
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "labkit.staff.grade", f"--stu-dir={ROOT}/stu_upload", "-q",
           "-p", "no:cacheprovider", "--sandbox=off", f"--grade-json={out}",
           os.path.join(ROOT, "tests", "test_layer_3.py")]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()                        # as `head -1` does
    err = p.stderr.read().decode()
    p.wait(timeout=300)
    assert out.exists(), err[-2000:]
    assert "BrokenPipe" not in err and "Traceback" not in err, err[-2000:]
