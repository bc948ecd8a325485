# labkit: staff-only  (tests the staff tools; not copied into the student kit, never graded)
"""Release safety of the teaching workflow: the kit, grading, batch grading.

The grading runs use a subset of the graded tests (layer_1, layer_2 and the hidden samples) to
keep this file fast; the kit-level checks (markers, no solution left, compile, import) cover
every stu_upload file.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from labkit.staff import kit as kitmod
from labkit.staff.grading import HIDDEN_PREFIX, MANIFEST_NAME, points_for, run_grading
from labkit.staff.kit import KitError, parse_regions, write_kit

pytestmark = pytest.mark.slow     # long: run with `python -m pytest -q -m slow`

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = os.path.join(ROOT, "tests_hidden")
SUBSET = ["tests/test_layer_1.py", "tests/test_layer_2.py"]
# tests/test_layer_2.py does not use the ``stu`` fixture yet (issue 14, phase 2): these
# release checks of the whole subset grade in-process; tests/test_layer_1.py and the hidden
# samples are also graded sandboxed below and in tests_staff/test_hostile.py.
OFF = ["--sandbox=off"]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("kit") / "student_kit"
    regions = write_kit(str(out))
    return out, regions


@pytest.fixture(scope="module")
def reference_grade(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ref") / "ref.json")
    report, proc = run_grading(os.path.join(ROOT, "stu_upload"), path, extra=SUBSET + OFF,
                               hidden=HIDDEN, timeout=300)
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    return report, proc


def test_reference_full_and_kit_zero_sandboxed(kit, tmp_path):
    """The converted tests/test_layer_1.py and every hidden test (the lab tests on the
    full-size fixture included) through the sandbox: the reference full, the blank kit 0."""
    out, _ = kit
    grades = {}
    for name, stu in (("ref", os.path.join(ROOT, "stu_upload")),
                      ("kit", str(out / "stu_upload"))):
        report, proc = run_grading(stu, str(tmp_path / f"{name}.json"),
                                   extra=["tests/test_layer_1.py"],
                                   hidden=HIDDEN, timeout=300)
        assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert report["sandbox"]["mode"] in ("bwrap", "uid", "none")
        grades[name] = report
    assert grades["ref"]["points"] == grades["ref"]["max_points"] > 0
    assert grades["kit"]["points"] == 0


# ------------------------------------------------------------------------- markers
def src(body):
    return "def f(x):\n" + body + "    return x\n"


BAD_SOURCES = {
    "unpaired BEGIN": (src("    # === STUDENT BEGIN: a ===\n    x = 1\n"), r"<t>:2: .*no STUDENT END"),
    "END without BEGIN": (src("    x = 1\n    # === STUDENT END ===\n"),
                          r"<t>:3: STUDENT END without"),
    "nested BEGIN": (src("    # === STUDENT BEGIN: a ===\n    # === STUDENT BEGIN: b ===\n"
                         "    x = 1\n    # === STUDENT END ===\n    # === STUDENT END ===\n"),
                     r"<t>:3: nested STUDENT BEGIN 'b' inside region 'a'"),
    "duplicate id": (src("    # === STUDENT BEGIN: a ===\n    x = 1\n    # === STUDENT END ===\n"
                         "    # === STUDENT BEGIN: a ===\n    x = 2\n    # === STUDENT END ===\n"),
                     r"<t>:5: duplicate task id 'a'"),
    "module level": ("# === STUDENT BEGIN: a ===\nx = 1\n# === STUDENT END ===\n",
                     r"<t>:1: .*not inside a function body"),
    "class body": ("class A:\n    # === STUDENT BEGIN: a ===\n    x = 1\n"
                   "    # === STUDENT END ===\n", r"<t>:2: .*not inside a function body"),
    "empty": (src("    # === STUDENT BEGIN: a ===\n    # hint: only a hint\n"
                  "    # === STUDENT END ===\n"), r"<t>:2: region 'a' is empty"),
    "malformed": (src("    # === STUDENT BEGIN a ===\n    x = 1\n"), r"<t>:2: malformed"),
    "END indent": (src("    for i in x:\n        # === STUDENT BEGIN: a ===\n        x = 1\n"
                       "    # === STUDENT END ===\n"), r"<t>:5: STUDENT END is indented"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_strict_marker_errors_name_file_and_line(case):
    source, pattern = BAD_SOURCES[case]
    with pytest.raises(KitError, match=pattern):
        parse_regions(source, "<t>")


def test_stub_keeps_hints_and_raises_in_a_loop():
    source = ("def f(xs):\n    out = []\n    for x in xs:\n"
              "        # === STUDENT BEGIN: twice ===\n        # hint: append 2x\n"
              "        out.append(2 * x)\n        # === STUDENT END ===\n    return out\n")
    regions = parse_regions(source, "m.py")
    stub = kitmod.stub_source(source, regions)
    assert "out.append(2 * x)" not in stub and "# hint: append 2x" in stub
    assert "        raise NotImplementedError('twice: " in stub
    namespace = {}
    exec(compile(stub, "m.py", "exec"), namespace)
    assert namespace["f"]([]) == []                       # the loop body never ran
    with pytest.raises(NotImplementedError, match="twice: not implemented yet: write f"):
        namespace["f"]([1])


# ------------------------------------------------------------------------- the kit
def test_kit_has_every_part_and_no_solution(kit):
    out, regions = kit
    for part in ("stu_upload", "labkit", "tests/conftest.py", "pytest.ini", "requirements.txt",
                 "models/README.md", "output", "README.md", "main_exp_3_1.py"):
        assert (out / part).exists(), part
    assert not (out / "tests_hidden").exists()
    assert not (out / "tests" / "test_teaching_workflow.py").exists()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert not any(t.startswith(HIDDEN_PREFIX) for t in manifest["tests"])
    # every reference stu_upload file is in the kit; independent solution-leak check
    ref_files = sorted(f for f in os.listdir(os.path.join(ROOT, "stu_upload"))
                       if f.endswith(".py"))
    assert sorted(f for f in os.listdir(out / "stu_upload") if f.endswith(".py")) == ref_files
    tasks = 0
    for path, file_regions in regions.items():
        ref = open(path).read().splitlines()
        inside = {n for r in file_regions for n in range(r.begin, r.end + 1)}
        allowed = {l.strip() for n, l in enumerate(ref, 1) if n not in inside}
        stub = (out / "stu_upload" / os.path.basename(path)).read_text()
        assert "STUDENT BEGIN" not in stub and "STUDENT END" not in stub
        stub_lines = {l.strip() for l in stub.splitlines()}
        for r in file_regions:
            tasks += 1
            assert f"raise NotImplementedError('{r.task}: " in stub
            for line in r.solution:
                s = line.strip()
                if s and s not in kitmod.TRIVIAL_LINES and s not in allowed:
                    assert s not in stub_lines, f"{r.task}: solution line left: {s}"
            for hint in r.hints:
                assert hint.strip() in stub_lines
        compile(stub, path, "exec")
    assert tasks >= 15
    readme = (out / "README.md").read_text()
    assert "python -m pytest" in readme and "隐藏测试" in readme and "hidden tests" in readme


def test_kit_imports_and_refuses_to_overwrite(kit, tmp_path):
    out, _ = kit
    modules = [f"stu_upload.{f[:-3]}" for f in sorted(os.listdir(out / "stu_upload"))
               if f.endswith(".py") and f != "__init__.py"]
    r = subprocess.run([sys.executable, "-c", "import importlib,sys\n"
                        "[importlib.import_module(m) for m in sys.argv[1:]]", *modules],
                       cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert kitmod.verify_kit(str(out)) == []
    with pytest.raises(KitError, match="not empty; pass --force"):
        write_kit(str(out))
    target = tmp_path / "k"
    target.mkdir()
    (target / "old.txt").write_text("x")
    write_kit(str(target), force=True, check_import=False)
    assert not (target / "old.txt").exists() and (target / "stu_upload").is_dir()
    with pytest.raises(KitError, match="overwrite the reference"):
        write_kit(ROOT, force=True)


def test_manifest_lists_exactly_the_suite():
    """tests/grading_manifest.json must match the tests; if not, rebuild it with
    'python -m labkit.staff.grading manifest --hidden tests_hidden'."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                        "-p", "no:cacheprovider", "tests", "tests_hidden"],
                       cwd=ROOT, capture_output=True, text=True)
    ids = set()
    for line in r.stdout.splitlines():
        if "::" in line and not line.startswith("tests/test_teaching_workflow.py"):
            ids.add(line.replace("tests_hidden/", HIDDEN_PREFIX, 1)
                    if line.startswith("tests_hidden/") else line)
    with open(os.path.join(ROOT, MANIFEST_NAME)) as f:
        manifest = set(json.load(f)["tests"])
    assert ids == manifest, ("the grading manifest is out of date; rebuild it with 'python -m "
                             "labkit.staff.grading manifest --hidden tests_hidden'. Not in the "
                             f"manifest: {sorted(ids - manifest)[:5]}; gone: "
                             f"{sorted(manifest - ids)[:5]}")


# ------------------------------------------------------------------------- grading
def test_reference_scores_full_points(reference_grade):
    report, _ = reference_grade
    graded = [t for t in report["tests"] if t["graded"]]
    assert len(graded) > 20 and any(t["hidden"] for t in graded)
    assert report["points"] == report["max_points"] > 0, \
        [t for t in graded if t["result"] != "passed"]
    assert report["hidden_run"] and report["hidden_tests_not_run"] == 0


def test_kit_scores_zero_with_clear_messages(kit, reference_grade, tmp_path):
    out, _ = kit
    report, proc = run_grading(str(out / "stu_upload"), str(tmp_path / "kit.json"),
                               extra=SUBSET + OFF, hidden=HIDDEN, timeout=300)
    assert report is not None, proc.stderr[-3000:]
    assert report["points"] == 0
    assert report["max_points"] == reference_grade[0]["max_points"]
    for t in report["tests"]:
        if t["graded"]:
            assert t["result"] == "failed" and t["message"].startswith("not implemented yet: ")
    assert "GRADE: 0 / " in proc.stdout and "not implemented yet: fc_forward" in proc.stdout


def test_public_only_run_never_claims_everything_passed(tmp_path):
    report, proc = run_grading(os.path.join(ROOT, "stu_upload"), str(tmp_path / "r.json"),
                               extra=["tests/test_layer_1.py"], timeout=300)
    assert report["points"] == report["max_points"] > 0
    assert report["hidden_tests_not_run"] > 0
    assert "public tests only, hidden tests not run" in proc.stdout
    assert "all graded tests passed" not in proc.stdout


def broken_copy(tmp_path):
    """A student folder: endless loop in ReLU forward, a syntax error in layer_2.py."""
    stu = tmp_path / "student" / "stu_upload"
    shutil.copytree(os.path.join(ROOT, "stu_upload"), stu,
                    ignore=shutil.ignore_patterns("__pycache__"))
    layer_1 = stu / "layer_1.py"
    text = layer_1.read_text()
    assert "        output = np.maximum(input, 0)\n" in text
    layer_1.write_text(text.replace("        output = np.maximum(input, 0)\n",
                                    "        while True:\n            pass\n"))
    layer_2 = stu / "layer_2.py"
    layer_2.write_text(layer_2.read_text().replace("def col2im(", "def col2im((", 1))
    return stu


def test_endless_loop_and_syntax_error_cost_only_their_tests(tmp_path):
    stu = broken_copy(tmp_path)
    report, proc = run_grading(str(tmp_path / "student"), str(tmp_path / "r.json"),
                               extra=[*SUBSET, *OFF, "--test-timeout", "1"], timeout=120)
    assert report is not None, proc.stderr[-3000:]
    by = {t["test"]: t for t in report["tests"]}
    relu = by["tests/test_layer_1.py::test_relu_gradient"]
    assert relu["result"] == "timeout" and "time limit of 1 s exceeded" in relu["message"]
    assert by["tests/test_layer_1.py::test_fc_forward_formula[1]"]["result"] == "passed"
    # tests reach student code lazily (labkit.runtime.student): every test that touches
    # layer_2.py fails with the SyntaxError and its line, the rest of the module still runs
    layer_2 = [t for t in report["tests"] if t["module"] == "tests/test_layer_2.py"
               and t["graded"]]
    assert layer_2 and all(t["result"] in ("failed", "error") and t["points"] == 0
                           for t in layer_2)
    assert all("SyntaxError" in t["message"] for t in layer_2), layer_2[0]["message"]
    assert any("layer_2.py, line" in t["message"] for t in layer_2), layer_2[0]["message"]
    assert str(stu) not in json.dumps(report["tests"])          # no temp paths in messages
    assert 0 < report["points"] < report["max_points"]


def test_stu_dir_with_a_space_grades_the_right_folder(kit):
    """pytest takes the kit folder (it has a pytest.ini) for its rootdir: the plugin refuses
    (its pytest.ini may have run); labkit.staff.grade grades the same command line."""
    out, _ = kit
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--stu-dir", str(out), "tests/test_layer_1.py"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 4 and "not graded" in r.stdout + r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "labkit.staff.grade", "-q", "-p",
                        "no:cacheprovider", "--stu-dir", str(out), "tests/test_layer_1.py"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert re.search(r"GRADE: 0 / [1-9][0-9]* points", r.stdout) and f"stu_upload: {out}" in r.stdout


# ------------------------------------------------------------------------- batch grading
def test_batch_grading_csv(kit, tmp_path):
    out, _ = kit
    subs = tmp_path / "subs"
    (subs / "alice").mkdir(parents=True)
    shutil.copytree(os.path.join(ROOT, "stu_upload"), subs / "alice" / "stu_upload",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with zipfile.ZipFile(subs / "bob.zip", "w") as zf:          # the blank kit, as a zip
        for f in sorted(os.listdir(out / "stu_upload")):
            if f.endswith(".py"):
                zf.write(out / "stu_upload" / f, f"bob_lab3/stu_upload/{f}")
    with zipfile.ZipFile(subs / "eve.zip", "w") as zf:          # path traversal
        zf.writestr("stu_upload/layer_1.py", "x = 1\n")
        zf.writestr("../../escaped.py", "x = 1\n")
    cmd = [sys.executable, "-m", "labkit.staff.batch_grade", str(subs), "--out",
           str(tmp_path / "grades.csv"), "--", "tests/test_layer_1.py"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "grades.csv")))
    assert [row["student"] for row in rows] == ["alice", "bob", "eve"]
    alice, bob, eve = rows
    assert alice["status"] == "graded" and alice["points"] == alice["max_points"] != "0"
    assert bob["status"] == "graded" and bob["points"] == "0"
    assert bob["max_points"] == alice["max_points"] and int(bob["failed_tests"]) > 0
    assert eve["status"] == "error" and "outside" in eve["notes"]
    assert not (tmp_path / "escaped.py").exists() and not (subs.parent / "escaped.py").exists()
    assert "public tests only; hidden tests not run" in alice["notes"]
    first = (tmp_path / "grades.csv").read_text()
    assert str(tmp_path) not in first and "batch_grade_" not in first
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "grades.csv").read_text() == first          # stable across runs
    with open(os.path.join(ROOT, MANIFEST_NAME)) as f:
        tests = json.load(f)["tests"]
    expected = sum(points_for(t) for t, info in tests.items()
                   if info["module"] == "tests/test_layer_1.py" and info["graded"])
    assert float(alice["max_points"]) == expected


# ------------------------------------------------------------------------- no answers in the kit
def test_kit_has_no_working_answer(kit):
    """The kit built from main: the folder, solution-line and behaviour probes find nothing
    (write_kit already refuses otherwise; this states it)."""
    from labkit.staff.leaks import find_leaks
    out, _ = kit
    assert find_leaks(str(out)) == []
    for staff in ("labkit/engine", "labkit/staff", "tests_staff", "tests_hidden"):
        assert not (out / staff).exists()


def test_leak_probe_catches_planted_answers(kit, tmp_path):
    """Negative control: answers planted in the runtime, in a public test, in the given part
    of a student file, and a copied solution line, are each reported."""
    from labkit.staff.leaks import find_leaks
    out, _ = kit
    bad = tmp_path / "bad_kit"
    shutil.copytree(out, bad)
    (bad / "labkit" / "runtime" / "helpers.py").write_text(
        "import numpy as np\n\n\n"
        "def conv_helper(x, w, b, pad, stride):\n"
        "    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))\n"
        "    k = w.shape[1]\n"
        "    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))\n"
        "    win = win[:, :, ::stride, ::stride]\n"
        "    return np.einsum('nchwpq,cpqo->nohw', win, w) + b[None, :, None, None]\n")
    with open(bad / "tests" / "test_images.py", "a") as f:
        f.write("\n\ndef loop_style_grad(x, y):\n"
                "    n, c, h, w = x.shape\n"
                "    fx, fy = x.reshape(n, c, -1), y.reshape(n, c, -1)\n"
                "    g = fx @ fx.transpose(0, 2, 1) - fy @ fy.transpose(0, 2, 1)\n"
                "    return (g @ fx).reshape(x.shape) / (n * c ** 2 * h ** 2 * w ** 2)\n")
    with open(bad / "stu_upload" / "_base.py", "a") as f:
        f.write("\n\ndef pool_helper(x, k, s):\n"
                "    v = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))\n"
                "    return v[:, :, ::s, ::s].max(axis=(4, 5))\n")
        f.write("\nimport numpy as np\n")
    problems = find_leaks(str(bad))
    text = "\n".join(problems)
    assert "labkit/runtime/helpers.py: conv_helper" in text and "conv_forward" in text
    assert "tests/test_images.py: loop_style_grad" in text and "style_grad" in text
    assert "stu_upload/_base.py: pool_helper" in text and "maxpool_forward" in text
    # a solution line copied anywhere (here into a docstring of the runtime) is reported
    lines_bad = tmp_path / "lines_kit"
    shutil.copytree(out, lines_bad)
    solution = "cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h_out * w_out,"
    with open(lines_bad / "labkit" / "runtime" / "images.py", "a") as f:
        f.write(f'\n"""\n{solution}\n"""\n')
    assert any("solution line of task 'img2col'" in p for p in find_leaks(str(lines_bad)))
    assert find_leaks(str(out)) == []
