"""Grading with pytest (a plugin, registered from tests/conftest.py) and its manifest.

Active only with ``--grade``, ``--stu-dir``, ``--hidden``, ``--grade-json`` or
``--grade-csv``; a plain ``pytest -q`` is unchanged.

    python -m pytest --grade                          # grade ./stu_upload (the kit: yours)
    python -m pytest --stu-dir PATH                   # grade another folder's stu_upload
    python -m pytest --stu-dir PATH --hidden tests_hidden --grade-json r.json --grade-csv r.csv
    python -m labkit.staff.grading manifest [--hidden tests_hidden]    # staff: rebuild the manifest

Which tests are *graded*: those that pass on the reference and fail on the blank student kit,
i.e. the tests that exercise at least one student task. Tests of ``labkit`` alone, and tests
in a student module's file that no task affects (argument checks of given code), are
ungraded checks: they run and are reported, worth 0 points. ``tests/grading_manifest.json``
records this, generated from the reference by ``python -m labkit.staff.grading manifest``; it also
lists every test that must exist, so a test module that does not import (a student's
SyntaxError) or a test that did not run scores 0 with a message, instead of vanishing.

Points per test come from ``POINTS`` below (first matching pattern, default 1). A per-test time
limit (``--test-timeout``, SIGALRM) turns an endless loop into one failed test.

With ``--stu-dir`` the student's code never runs in this process: it runs in a sandboxed
worker (``labkit/staff/sandbox/``, ``--sandbox``), the tests get proxies (``import stu_upload``
and the ``stu`` fixture), the drivers the tests start run in the sandbox too, the staff files
are fingerprinted before and after, and the grade is written here, atomically.
"""
import argparse
import contextlib
import csv
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from labkit.staff._stu_site.sitecustomize import PACKAGE, install

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stu_site")
MANIFEST_NAME = os.path.join("tests", "grading_manifest.json")
STAFF_TESTS = "tests_staff"
HIDDEN_PREFIX = "hidden/"
DEFAULT_TIMEOUT = 60.0

# The rubric. Every graded test is "lab" (what the handout and the original kit require,
# graded through the original interface: tests_hidden/test_lab_*.py) or "beyond" (this kit's
# extensions: dtype preservation, helper functions, need_param_grad, one-pass backward, error
# types and wording, the drivers' options). A lab row's points are shared by the tests it
# matches, so a task weighs what the lab weighs it (exp 3.1 as the original course: conv and
# pool forward 60, pool5 20, the class 20), not its number of parametrised cases. The README's
# rubric table is this table. Rows: (node-id pattern, experiment, points); first match wins.
LAB_RUBRIC = [
    ("hidden/test_lab_3_1.py::test_conv_forward*", "3.1", 30),
    ("hidden/test_lab_3_1.py::test_pool_forward*", "3.1", 30),
    ("hidden/test_lab_3_1.py::test_pool5_matches_the_reference", "3.1", 20),
    ("hidden/test_lab_3_1.py::test_classifies_the_cat", "3.1", 20),
    ("hidden/test_lab_3_2.py::test_dlp_classifies_like_the_cpu", "3.2", 90),
    ("hidden/test_lab_3_2.py::test_get_top5_runs_forward_itself", "3.2", 10),
    ("hidden/test_lab_3_3.py::test_conv_speedup*", "3.3", 20),
    ("hidden/test_lab_3_3.py::test_conv_backward_raw*", "3.3", 10),
    ("hidden/test_lab_3_3.py::test_pool_backward*", "3.3", 10),
    ("hidden/test_lab_3_3.py::test_relu_backward", "3.3", 5),
    ("hidden/test_lab_3_3.py::test_content_loss", "3.3", 10),
    ("hidden/test_lab_3_3.py::test_style_loss", "3.3", 15),
    ("hidden/test_lab_3_3.py::test_adam", "3.3", 10),
    ("hidden/test_lab_3_3.py::test_feature_network_forward_backward", "3.3", 20),
]
# beyond: points per test (first matching pattern, default 1)
POINTS = [
    ("tests/test_vgg_cpu.py::test_raw_and_fast_paths_agree_float64", 3),
    ("tests/test_vgg_cpu.py::test_classifies_end_to_end*", 2),
    ("tests/test_vgg_cpu.py::test_cli_classifies_and_checks_pool5", 2),
    ("tests/test_layer_2.py::test_conv_gradients*", 2),
]
DEFAULT_POINTS = 1
# beyond tests' experiment, by test module (a module not listed belongs to none)
MODULE_EXPERIMENT = {
    "tests/test_layer_1.py": "3.1", "tests/test_layer_2.py": "3.1",
    "tests/test_vgg_cpu.py": "3.1", "hidden/test_hidden_layers.py": "3.1",
    "tests/test_vgg19_demo.py": "3.2",
    "tests/test_layer_3.py": "3.3", "tests/test_style_transfer.py": "3.3",
    "hidden/test_lab_3_1.py": "3.1", "hidden/test_lab_3_2.py": "3.2",
    "hidden/test_lab_3_3.py": "3.3",
}
CATEGORIES = ("lab", "beyond")


def lab_row(test_id):
    """The LAB_RUBRIC row (pattern, experiment, points) that ``test_id`` falls in, or None."""
    for row in LAB_RUBRIC:
        if fnmatch.fnmatchcase(test_id, row[0]):
            return row
    return None


def category_for(test_id):
    return "lab" if lab_row(test_id) else "beyond"


def experiment_for(test_id):
    row = lab_row(test_id)
    if row:
        return row[1]
    return MODULE_EXPERIMENT.get(test_id.partition("::")[0])


def points_for(test_id, graded_ids=None):
    """Points of one graded test: a lab row's points shared by the graded tests it matches
    (``graded_ids``: the graded test ids; default: the test alone), or POINTS for beyond."""
    row = lab_row(test_id)
    if row:
        share = sum(fnmatch.fnmatchcase(t, row[0]) for t in graded_ids) if graded_ids else 1
        return row[2] / max(share, 1)
    for pattern, points in POINTS:
        if fnmatch.fnmatchcase(test_id, pattern):
            return points
    return DEFAULT_POINTS


NOT_SUBMITTED = "not submitted"


class TestTimeout(BaseException):
    """The per-test time limit ran out (a BaseException: ``except Exception`` won't hide it)."""


def find_stu_package(path):
    """The ``stu_upload`` folder that ``path`` names: the folder itself, or its
    ``stu_upload`` sub-folder. Raises ValueError."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, PACKAGE)):
        return os.path.join(path, PACKAGE)
    if os.path.isdir(path) and (os.path.basename(path) == PACKAGE or
                                any(n.endswith(".py") for n in os.listdir(path))):
        return path
    raise ValueError(f"--stu-dir {path}: neither a {PACKAGE} folder nor a folder containing "
                     f"one")


# ------------------------------------------------------------------------------- messages
NOT_IMPLEMENTED_RE = re.compile(r"NotImplementedError: ([A-Za-z_][A-Za-z0-9_]*):")


def _first_line(text, limit=300):
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def teaching_message(report, timeout):
    """One line that says why the test failed: the task not implemented yet, the time limit,
    or the first line of the assertion (which tensor, relative error, threshold)."""
    text = report.longreprtext or ""
    crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "") or ""
    tasks = NOT_IMPLEMENTED_RE.findall(crash) or NOT_IMPLEMENTED_RE.findall(text)
    if tasks:
        return "not implemented yet: " + ", ".join(dict.fromkeys(tasks))
    if "TestTimeout" in crash or "TestTimeout" in text:
        return f"time limit of {timeout:g} s exceeded (an endless loop, or far too slow)"
    for name, prefix in (("StudentTimeout", ""), ("StudentMemoryError", ""),
                         ("StudentCrash", "crashed: ")):
        m = re.search(name + r": (.*)", crash) or re.search(name + r": (.*)", text)
        if m:
            return prefix + _first_line(m.group(1))
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else text
        return "skipped: " + _first_line(str(reason)).replace("Skipped: ", "")
    if not crash:
        return _first_line(text)
    syntax = re.search(r"^\s*((?:Syntax|Indentation|Tab)Error\b.*)$", crash, re.M)
    where = re.search(r'File "([^"]+)", line (\d+)', crash)
    if syntax and where:        # a student file that does not compile (resolved lazily)
        return f"{syntax.group(1).strip()} ({os.path.basename(where.group(1))}, line " \
               f"{where.group(2)})"
    crash = re.sub(r"^(?:[A-Za-z_][\w]*\.)+(?=\w+(?:Error|Exception|Warning)\b)", "", crash)
    line = _first_line(crash)
    if line.startswith("assert ") or line in ("AssertionError", "assert False"):
        sources = [l[1:].strip() for l in text.splitlines() if l.startswith(">")]
        if sources:
            return f"assertion failed: {sources[-1]}"
    return line


def collect_error_message(text):
    """'SyntaxError: invalid syntax (layer_2.py, line 40)' from a collection error report."""
    lines = [l[1:].strip() for l in text.splitlines() if l.startswith("E ")]
    errors = [l for l in lines if re.match(r"[\w.]*(Error|Exception)\b", l)]
    msg = errors[-1] if errors else _first_line(text)
    where = re.findall(r'File "([^"]+)", line (\d+)', text)
    where = [w for w in where if f"{os.sep}{PACKAGE}" in w[0] or PACKAGE + "/" in w[0]]
    if where:
        msg += f" ({PACKAGE}/{os.path.basename(where[-1][0])}, line {where[-1][1]})"
    return "could not import the test module: " + msg


# ------------------------------------------------------------------------------- plugin
def pytest_addoption(parser):
    g = parser.getgroup("grading", "grading (labkit.staff.grading)")
    g.addoption("--grade", action="store_true", help="grade: points per test and a summary")
    g.addoption("--stu-dir", metavar="PATH",
                help="grade this folder's stu_upload (a stu_upload folder or a folder holding "
                "one) instead of ./stu_upload; implies --grade")
    g.addoption("--hidden", metavar="DIR", help="also run the hidden tests in DIR")
    g.addoption("--grade-json", metavar="PATH", help="write the grade report as JSON")
    g.addoption("--grade-csv", metavar="PATH", help="write the per-test grades as CSV")
    g.addoption("--test-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                help="per-test time limit while grading (0: none)")
    g.addoption("--sandbox", default="auto",
                choices=("auto", "bwrap", "uid", "none", "off"),
                help="with --stu-dir: how student code is isolated (auto: the strongest that "
                "works here; off: import it into the grader, unsafe, for comparisons only)")
    g.addoption("--sandbox-memory", type=float, default=4.0, metavar="GIB",
                help="memory limit (address space) of the student's processes, GiB")
    g.addoption("--call-timeout", type=float, default=None, metavar="SECONDS",
                help="wall-clock limit of one call into student code (default: "
                "--test-timeout)")
    g.addoption("--grade-manifest", metavar="PATH",
                help=f"manifest of the graded tests (default: {MANIFEST_NAME}; 'none': every "
                "test is graded, used to build the manifest)")


def public_fixtures(root=ROOT):
    """The fixtures of tests/conftest.py, for a hidden tests folder's conftest.py::

        from labkit.staff.grading import public_fixtures
        globals().update(public_fixtures())
    """
    import importlib.util
    path = os.path.join(root, "tests", "conftest.py")
    spec = importlib.util.spec_from_file_location("labkit_public_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and k != "pytest_plugins" and callable(v)
            and "fixture" in type(v).__name__.lower()}


def pytest_configure(config):
    opt = config.getoption
    if not any(opt(o) for o in ("grade", "stu_dir", "hidden", "grade_json", "grade_csv")):
        return
    _check_rootdir(config)
    config.pluginmanager.register(Grader(config), "labkit-grader")


PATH_OPTIONS = ("--stu-dir", "--hidden", "--grade-json", "--grade-csv", "--grade-manifest")


def _check_rootdir(config):
    """pytest picks its rootdir and ini file before it knows plugin options, so in
    ``--stu-dir PATH`` it may take PATH for a test folder and read PATH's own pytest.ini (a
    kit has one). Then run again as ``--stu-dir=PATH`` (a command-line run), or stop:
    never grade with the wrong configuration."""
    args = list(config.invocation_params.args)
    spaced = [a for a in args if a in PATH_OPTIONS]
    inv, root = str(config.invocation_params.dir), str(config.rootpath)
    if not spaced or inv == root or inv.startswith(root + os.sep):
        os.environ.pop("LABKIT_REEXEC", None)
        return
    if args == sys.argv[1:] and not os.environ.get("LABKIT_REEXEC"):
        fixed, i = [], 0
        while i < len(args):
            if args[i] in PATH_OPTIONS and i + 1 < len(args):
                fixed.append(f"{args[i]}={args[i + 1]}")
                i += 2
            else:
                fixed.append(args[i])
                i += 1
        print(f"note: pytest took the value of {spaced[0]} for a test path; running again as "
              f"{spaced[0]}=...", file=sys.stderr, flush=True)
        os.environ["LABKIT_REEXEC"] = "1"
        os.chdir(inv)
        os.execv(sys.executable, [sys.executable, "-m", "pytest", *fixed])
    raise pytest.UsageError(
        f"pytest read the value of {spaced[0]} as a test path and chose the wrong rootdir "
        f"({root}); write the option with '=', e.g. {spaced[0]}=PATH, or add -c pytest.ini")


class Grader:
    def __init__(self, config):
        self.config = config
        self.root = str(config.rootpath)
        self.timeout = config.getoption("test_timeout") or 0
        self.results, self.collect_errors, self.deselected = {}, {}, set()
        self.init_error = None
        self._keyword = None        # (-k expression, compiled or None if it does not compile)
        stu = config.getoption("stu_dir")
        try:
            self.stu_pkg = find_stu_package(stu) if stu else os.path.join(self.root, PACKAGE)
        except ValueError as exc:
            raise pytest.UsageError(str(exc))
        from labkit.runtime import legacy
        from labkit.runtime.student import experiments_present
        legacy.install()        # before any student code: np.float, scipy.misc.imread ...
        # experiments whose files were submitted (either naming); the others are not counted
        self.experiments_present = (experiments_present(self.stu_pkg)
                                    if os.path.isdir(self.stu_pkg) else {})
        self.session = None
        self.sandbox_mode = "off" if stu else None
        self.integrity_before = None
        hidden_opt = config.getoption("hidden")
        if stu and config.getoption("sandbox") != "off":
            self._start_sandbox(config, hidden_opt)
        elif stu:
            self.init_error = install(self.stu_pkg)
            os.environ["LABKIT_STU_DIR"] = self.stu_pkg
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [SITE_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        from labkit.staff.sandbox.integrity import Redactor
        self.redact = Redactor(os.path.abspath(hidden_opt) if hidden_opt else None)
        self._last_partial = 0.0
        if config.args_source != pytest.Config.ArgsSource.ARGS:     # testpaths: not the
            config.args[:] = [a for a in config.args                 # staff-only tests
                              if os.path.basename(os.path.normpath(a)) != STAFF_TESTS]
        hidden = config.getoption("hidden")
        self.hidden_dir = os.path.abspath(hidden) if hidden else None
        if self.hidden_dir:
            if not os.path.isdir(self.hidden_dir):
                raise pytest.UsageError(f"--hidden {hidden}: no such folder")
            self.selected_args = list(config.args)
            if config.args_source != pytest.Config.ArgsSource.ARGS:
                self.selected_args = []
            config.args.append(self.hidden_dir)
        else:
            self.selected_args = (list(config.args)
                                  if config.args_source == pytest.Config.ArgsSource.ARGS else [])
        manifest = config.getoption("grade_manifest")
        if manifest is None:
            manifest = os.path.join(self.root, MANIFEST_NAME)
            if not os.path.exists(manifest):
                raise pytest.UsageError(f"no grading manifest at {manifest}; build it with "
                                        f"'python -m labkit.staff.grading manifest'")
        self.manifest = None
        if manifest != "none":
            with open(manifest, encoding="utf-8") as f:
                self.manifest = json.load(f)
        config.option.continue_on_collection_errors = True
        if config.option.tbstyle == "auto" and not any(
                a.startswith("--tb") for a in config.invocation_params.args):
            config.option.tbstyle = "no"

    def _start_sandbox(self, config, hidden):
        from labkit.staff.sandbox import integrity
        from labkit.staff.sandbox.client import Session, install_proxy_package
        from labkit.staff.sandbox.process import GIB, Limits, SandboxError
        memory = config.getoption("sandbox_memory")
        if not memory > 0:
            raise pytest.UsageError("--sandbox-memory must be > 0 (GiB)")
        call_timeout = config.getoption("call_timeout") or self.timeout or 0
        self.integrity_before = integrity.fingerprint(self.root, hidden and
                                                      os.path.abspath(hidden))
        try:
            self.session = Session(self.stu_pkg, mode=config.getoption("sandbox"),
                                   limits=Limits(memory=int(memory * GIB)),
                                   timeout=call_timeout)
        except SandboxError as exc:
            raise pytest.UsageError(str(exc))
        self.sandbox_mode = self.session.mode
        info = os.environ.get("LABKIT_SANDBOX_INFO")
        if info:            # for batch_grade: whose processes to end if it must kill us
            _write_json(info, {"uid": self.session.sandbox.uid,
                               "token": self.session.sandbox.token,
                               "scratch": self.session.sandbox.scratch.path})
        install_proxy_package(self.session)
        from labkit.runtime.student import use_export_hook, use_package_dir, use_seed_hook
        use_package_dir(self.stu_pkg)       # file names only: which naming, which experiments
        use_seed_hook(self.session.seed_numpy)      # np.random.seed in the worker too
        use_export_hook(self.session.export)        # a test's layers/functions for student code
        if not config.option.basetemp:          # the tests' files: where drivers may write
            config.option.basetemp = os.path.join(self.session.sandbox.scratch.tmp, "t")
        scratch = self.session.sandbox.scratch  # ... and the student's code reads and writes
        self.session.before_call = lambda: scratch.give_new(scratch.tmp)
        _sandbox_drivers(self.session)

    # -- ids ------------------------------------------------------------------------------
    def canonical(self, nodeid):
        path, sep, rest = nodeid.partition("::")
        full = os.path.normpath(os.path.join(self.root, path))
        if self.hidden_dir and (full == self.hidden_dir or
                                full.startswith(self.hidden_dir + os.sep)):
            rel = os.path.relpath(full, self.hidden_dir).replace(os.sep, "/")
            return HIDDEN_PREFIX + rel + sep + rest
        return nodeid

    def _sanitize(self, text):
        text = text.replace(self.stu_pkg + os.sep, PACKAGE + "/").replace(self.stu_pkg, PACKAGE)
        if self.session is not None:
            text = text.replace(self.session.sandbox.scratch.path, "<scratch>")
        return self.redact(text)

    # -- hooks ----------------------------------------------------------------------------
    def pytest_unconfigure(self, config):
        self.finish_sandbox()       # also when the run ends early: no student process lives on

    def pytest_ignore_collect(self, collection_path, config):
        from labkit.staff.kit import is_staff_only
        if collection_path.name == STAFF_TESTS and collection_path.is_dir():
            return True         # staff-only tests (engine, staff tools): never graded
        if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
            return True if is_staff_only(str(collection_path)) else None
        return None

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors[self.canonical(report.nodeid)] = self._sanitize(
                collect_error_message(report.longreprtext or str(report.longrepr)))

    def pytest_deselected(self, items):
        self.deselected.update(self.canonical(i.nodeid) for i in items)

    @contextlib.contextmanager
    def _time_limit(self):
        """SIGALRM after --test-timeout seconds (main thread, where setitimer exists)."""
        if not self.timeout or not hasattr(signal, "setitimer") or \
                threading.current_thread() is not threading.main_thread():
            yield
            return
        limit = self.timeout

        def on_alarm(signum, frame):
            raise TestTimeout(f"time limit of {limit:g} s exceeded")
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit, 1.0)    # fires again if swallowed
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        with self._time_limit():
            yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        with self._time_limit():
            yield

    def pytest_runtest_logreport(self, report):
        test_id = self.canonical(report.nodeid)
        previous = self.results.get(test_id)
        if previous and previous["result"] != "passed":
            return                                  # keep the first problem
        if report.failed:
            text = report.longreprtext or ""
            result = "timeout" if ("TestTimeout" in text or "StudentTimeout" in text) else (
                "failed" if report.when == "call" else "error")
            self.results[test_id] = {"result": result, "message": self._sanitize(
                teaching_message(report, self.timeout))}
        elif report.skipped:
            self.results[test_id] = {"result": "skipped",
                                     "message": teaching_message(report, self.timeout)}
        elif report.when == "call":
            self.results[test_id] = {"result": "passed", "message": ""}
        if report.when == "teardown" and self.config.getoption("grade_json") and \
                time.monotonic() - self._last_partial > 1.0:
            self._last_partial = time.monotonic()      # partial result, should we be killed
            grade = self.compute()
            grade["status"] = "incomplete"
            grade["verdict"] = "grading did not finish: " + self.verdict(grade)
            _write_json(self.config.getoption("grade_json"), grade)

    # -- the grade ------------------------------------------------------------------------
    def _selected(self, test_id, module):
        """Whether a manifest test belongs to this run (paths given on the command line,
        -k); hidden tests only with --hidden."""
        if test_id.startswith(HIDDEN_PREFIX):
            return self.hidden_dir is not None
        if self.selected_args:
            full_id = test_id
            ok = False
            inv = str(self.config.invocation_params.dir)
            mpath = os.path.normpath(os.path.join(self.root, module))
            for arg in self.selected_args:
                path, sep, rest = str(arg).partition("::")
                apath = os.path.normpath(os.path.join(inv, path))
                if sep:
                    rel = os.path.relpath(apath, self.root).replace(os.sep, "/")
                    ok = ok or full_id.startswith(rel + "::" + rest)
                elif mpath == apath or mpath.startswith(apath + os.sep):
                    ok = True
            if not ok:
                return False
        keyword = self.config.getoption("keyword")
        if keyword:
            if self._keyword is None or self._keyword[0] != keyword:
                try:            # compiled once; one that does not compile selects every test
                    from _pytest.mark.expression import Expression
                    self._keyword = (keyword, Expression.compile(keyword))
                except Exception:
                    self._keyword = (keyword, None)
            expr = self._keyword[1]
            if expr is None:
                return True
            try:
                parts = re.split(r"::|/|\[|\]", test_id.lower())
                return expr.evaluate(lambda s: any(s.lower() in p for p in parts))
            except Exception:
                return True
        return True

    def _graded_ids(self):
        """The graded tests of the manifest (or of this run without one): a lab row's points
        are shared among them."""
        if self.manifest is not None:
            return [t for t, v in self.manifest.get("tests", {}).items()
                    if v.get("graded", True)]
        return list(self.results)

    def compute(self):
        rows = []
        manifest_tests = (self.manifest or {}).get("tests", {})
        graded_ids = self._graded_ids()
        present = self.experiments_present
        seen = set()
        for test_id, info in sorted(manifest_tests.items()):
            if test_id in self.deselected or not self._selected(test_id, info["module"]):
                continue
            seen.add(test_id)
            graded = info.get("graded", True)
            max_points = points_for(test_id, graded_ids) if graded else 0
            res = self.results.get(test_id)
            if res is None:
                err = self.collect_errors.get(info["module"])
                res = ({"result": "error", "message": err} if err else
                       {"result": "missing", "message": "not run: missing from this run"})
            rows.append(self._row(test_id, graded, max_points, res, info.get("hidden"), present))
        for test_id, res in sorted(self.results.items()):
            if test_id in seen:
                continue
            if self.manifest is None:
                rows.append(self._row(test_id, True, points_for(test_id, graded_ids), res,
                                      test_id.startswith(HIDDEN_PREFIX), present))
            else:
                res = dict(res, message=(res["message"] + "; " if res["message"] else "") +
                           "not in the grading manifest: 0 points (rebuild it with 'python -m "
                           "labkit.staff.grading manifest')")
                rows.append(self._row(test_id, False, 0, res, test_id.startswith(HIDDEN_PREFIX),
                                      present))
        for module, err in sorted(self.collect_errors.items()):
            if not any(r["module"] == module for r in rows):
                rows.append(self._row(module, self.manifest is None, 0,
                                      {"result": "error", "message": err},
                                      module.startswith(HIDDEN_PREFIX), present))
        hidden_all = {k for k, v in manifest_tests.items() if v.get("hidden")}
        hidden_count = len(hidden_all) or (self.manifest or {}).get(
            "hidden_summary", {}).get("count", 0)
        graded = [r for r in rows if r["graded"]]
        counted = [r for r in graded if r["result"] != NOT_SUBMITTED]

        def total(rows_, key):
            return round(sum(r[key] for r in rows_), 2)

        points, max_points = total(counted, "points"), total(counted, "max_points")
        by_cat = {c: [r for r in counted if r["category"] == c] for c in CATEGORIES}
        experiments = {}
        for exp in sorted(present):
            mine = [r for r in counted if r["experiment"] == exp]
            experiments[exp] = {"submitted": present[exp], **{
                f"{c}_{k}": total([r for r in mine if r["category"] == c], key)
                for c in CATEGORIES for k, key in (("points", "points"),
                                                   ("max_points", "max_points"))}}
        return {
            "stu_dir": self.stu_pkg,
            "points": points, "max_points": max_points,
            "percent": round(100.0 * points / max_points, 1) if max_points else 0.0,
            "lab_points": total(by_cat["lab"], "points"),
            "lab_max_points": total(by_cat["lab"], "max_points"),
            "beyond_points": total(by_cat["beyond"], "points"),
            "beyond_max_points": total(by_cat["beyond"], "max_points"),
            "experiments": experiments,
            "graded_tests": len(counted),
            "passed": sum(r["result"] == "passed" for r in counted),
            "failed": sum(r["result"] != "passed" for r in counted),
            "not_submitted": len(graded) - len(counted),
            "hidden_run": self.hidden_dir is not None,
            "hidden_tests_not_run": 0 if self.hidden_dir else hidden_count,
            "manifest": self.manifest is not None,
            "init_error": (self.session.init_error if self.session is not None
                           else self.init_error),
            "sandbox": self._sandbox_info(),
            "collection_errors": dict(sorted(self.collect_errors.items())),
            "tests": rows,
        }

    def _sandbox_info(self):
        if self.session is None:
            return {"mode": self.sandbox_mode}
        s = self.session
        return {"mode": s.mode, "limits": s.limits.describe(),
                "call_timeout": s.timeout, "events": s.events[-20:],
                "notes": s.sandbox.scratch.notes[:20]}

    def finish_sandbox(self):
        """End every student process, then compare the staff files' fingerprints."""
        if self.session is None or self.session.closed:
            return None
        from labkit.staff.sandbox import integrity
        self.worker_output = self.redact(self.session.sandbox.scratch.output())
        self.session.close()
        hidden = self.config.getoption("hidden")
        after = integrity.fingerprint(self.root, hidden and os.path.abspath(hidden))
        self.integrity_changes = integrity.changes(self.integrity_before, after)
        return self.integrity_changes

    @staticmethod
    def _row(test_id, graded, max_points, res, hidden, present=None):
        experiment = experiment_for(test_id)
        if graded and experiment and present is not None and not present.get(experiment, True):
            res = {"result": NOT_SUBMITTED, "message": f"exp {experiment} not submitted (none "
                   f"of its files is in {PACKAGE}): not counted"}
            max_points = 0
        passed = res["result"] == "passed"
        return {"test": test_id, "module": test_id.partition("::")[0], "graded": graded,
                "category": category_for(test_id), "experiment": experiment,
                "hidden": bool(hidden), "points": max_points if passed else 0,
                "max_points": max_points, "result": res["result"], "message": res["message"]}

    @staticmethod
    def verdict(grade):
        if grade["hidden_run"]:
            scope = " (public and hidden tests)"
        elif grade["hidden_tests_not_run"]:
            scope = (f"; public tests only, hidden tests not run "
                     f"({grade['hidden_tests_not_run']} hidden tests)")
        else:
            scope = "; public tests only, hidden tests not run"
        if grade["graded_tests"] and not grade["failed"]:
            what = ("all graded tests passed" if grade["hidden_run"]
                    else "all graded public tests passed")
        else:
            what = f"{grade['passed']} of {grade['graded_tests']} graded tests passed"
        return what + scope

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter):
        yield                               # after pytest's own summary: the grade comes last
        self.finish_sandbox()
        grade = self.compute()
        grade["verdict"] = self.verdict(grade)
        grade["status"] = "graded"
        changed = getattr(self, "integrity_changes", None)
        if changed:
            grade.update(status="integrity-error", points=0, percent=0.0,
                         integrity_changes=changed[:50])
            grade["verdict"] = (f"GRADING ERROR: staff files changed while grading "
                                f"{self.stu_pkg}: " + "; ".join(changed[:5]))
        if self.session is not None:
            grade["worker_output"] = getattr(self, "worker_output", "")
        tr = terminalreporter
        tr.write_sep("=", "grade")
        graded = [r for r in grade["tests"] if r["graded"]]
        ungraded = [r for r in grade["tests"] if not r["graded"]]
        width = min(max([len(r["test"]) for r in graded] + [4]), 70)
        tr.write_line(f"{'test':<{width}}  cat.    points     result   message")
        for r in graded:
            name = r["test"] if len(r["test"]) <= width else "..." + r["test"][-(width - 3):]
            msg = r["message"] if len(r["message"]) <= 110 else r["message"][:107] + "..."
            tr.write_line(f"{name:<{width}}  {r['category']:<6}  {r['points']:>4.3g}/"
                          f"{r['max_points']:<5.3g} {r['result'].upper():<8} {msg}".rstrip())
        bad = [r for r in ungraded if r["result"] not in ("passed", "skipped")]
        tr.write_line(f"ungraded checks (no student task affects them): {len(ungraded)}, "
                      f"{len(ungraded) - len(bad)} passed or skipped")
        for r in bad:
            tr.write_line(f"  {r['test']}: {r['result'].upper()} {r['message']}")
        if grade["init_error"]:
            tr.write_line(f"{PACKAGE}/__init__.py failed: {grade['init_error']}")
        tr.write_line(f"{PACKAGE}: {grade['stu_dir']}")
        tr.write_line(f"sandbox: {grade['sandbox']['mode']}"
                      + (f" ({grade['sandbox']['limits']})" if "limits" in grade["sandbox"]
                         else ""))
        if changed:
            tr.write_sep("!", "GRADING ERROR", red=True)
            for line in changed[:20]:
                tr.write_line(f"  {line}", red=True)
        for exp, e in grade["experiments"].items():
            if not e["submitted"]:
                tr.write_line(f"exp {exp}: not submitted (not counted)")
                continue
            tr.write_line(f"exp {exp}: lab {e['lab_points']:g}/{e['lab_max_points']:g}, beyond "
                          f"{e['beyond_points']:g}/{e['beyond_max_points']:g}")
        tr.write_line(f"LAB: {grade['lab_points']:g} / {grade['lab_max_points']:g} points; "
                      f"BEYOND: {grade['beyond_points']:g} / {grade['beyond_max_points']:g}")
        tr.write_line(f"GRADE: {grade['points']:g} / {grade['max_points']:g} points "
                      f"({grade['percent']:.1f}%): {grade['verdict']}", bold=True)
        if self.config.getoption("grade_json"):
            _write_json(self.config.getoption("grade_json"), grade)
        if self.config.getoption("grade_csv"):
            with _atomic(self.config.getoption("grade_csv"), newline="") as f:
                w = csv.writer(f)
                w.writerow(["test", "category", "experiment", "points", "max_points", "result",
                            "graded", "hidden", "message"])
                for r in grade["tests"]:
                    w.writerow([r["test"], r["category"], r["experiment"] or "",
                                f"{r['points']:g}", f"{r['max_points']:g}", r["result"],
                                int(r["graded"]), int(r["hidden"]), r["message"]])


@contextlib.contextmanager
def _atomic(path, newline=None):
    """Write ``path`` through a temporary file in the same folder, then os.replace."""
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json(path, data):
    with _atomic(path) as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def _descendants(pid):
    """The processes started (directly or not) by ``pid``, from /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _uid_of(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _sandbox_drivers(session):
    """Run the drivers that tests start (``python main_exp_3_x.py ...``) in the sandbox:
    the scratch copy of the driver and the submission, its limits and scrubbed environment;
    they may write in the tests' temporary folder only."""
    from labkit.staff.sandbox.process import DRIVERS
    sandbox = session.sandbox
    drivers = {os.path.realpath(os.path.join(ROOT, n)): n for n in DRIVERS}
    base = subprocess.Popen
    if getattr(base, "_labkit_sandboxed", False):
        base = base._labkit_base

    class SandboxedPopen(base):
        _labkit_sandboxed = True
        _labkit_base = base

        def __init__(self, args, *a, **kw):
            argv = list(args) if isinstance(args, (list, tuple)) else None
            if argv and len(argv) >= 2 and os.path.realpath(str(argv[1])) in drivers:
                name = drivers[os.path.realpath(str(argv[1]))]
                tmp = sandbox.scratch.tmp
                cwd = os.path.realpath(str(kw.get("cwd") or os.getcwd()))
                if not (cwd == tmp or cwd.startswith(tmp + os.sep)):
                    cwd = sandbox.scratch.work
                sandbox.scratch.give(tmp)       # (its parent, the scratch folder: 0o711)
                inner = sandbox.python() + [os.path.join(sandbox.scratch.code, name),
                                            *map(str, argv[2:])]
                kw.update(sandbox.start_kwargs(cwd))
                args = sandbox.command(inner, cwd, rw=[tmp])
                self._labkit_uid = sandbox.uid
            super().__init__(args, *a, **kw)

        def send_signal(self, sig):
            """A signal for the driver reaches the driver (not bubblewrap, which would die
            of it): every process of this sandbox's uid started under this one."""
            uid = getattr(self, "_labkit_uid", None)
            if uid is None or self.poll() is not None:
                return super().send_signal(sig)
            targets = [pid for pid in _descendants(self.pid) if _uid_of(pid) == uid]
            if not targets:
                return super().send_signal(sig)
            for pid in targets:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    subprocess.Popen = SandboxedPopen


# ------------------------------------------------------------------------------- manifest
def run_grading(stu_dir, json_path, extra=(), hidden=None, manifest=None, timeout=None,
                cwd=ROOT, sandbox=None):
    """Grade ``stu_dir`` in a fresh ``python -m pytest``; returns (report or None, process).
    On ``timeout`` the grader's process group and the submission's processes are killed and
    ``subprocess.TimeoutExpired`` is raised (a partial report may be at ``json_path``)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-c", os.path.join(cwd, "pytest.ini"), f"--rootdir={cwd}",
           f"--stu-dir={stu_dir}", f"--grade-json={json_path}"]
    if hidden:
        cmd += [f"--hidden={hidden}"]
    if manifest:
        cmd += [f"--grade-manifest={manifest}"]
    if sandbox:
        cmd += [f"--sandbox={sandbox}"]
    cmd += list(extra)
    info = json_path + ".sandbox"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "LABKIT_STU_DIR", "LABKIT_SANDBOX"))}
    env.update(PYTHONDONTWRITEBYTECODE="1", LABKIT_SANDBOX_INFO=info)
    popen = getattr(subprocess.Popen, "_labkit_base", subprocess.Popen)
    with popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
               env=env, start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        finally:            # also on TimeoutExpired, which then propagates
            _kill_group(p)
            _end_submission(info)
    proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    report = None
    if os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            report = json.load(f)
    return report, proc


def _kill_group(p):
    from labkit.staff.sandbox import process
    process.kill_group(p)


def _end_submission(info_path):
    """Kill what a (killed) grader's submission left running: its uid's or token's processes."""
    from labkit.staff.sandbox import process
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return 0
    uid = info.get("uid")
    found = process.kill_processes(uid, info["token"] if uid is None else None)
    scratch = info.get("scratch", "")
    if os.path.basename(scratch).startswith("labkit_sbx_"):
        import shutil
        shutil.rmtree(scratch, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.unlink(info_path)
    return found


def build_manifest(hidden=None, out=None, root=ROOT):
    """Grade the reference and a fresh kit with every test graded; keep the tests that pass
    on the reference, graded when they fail on the kit."""
    from labkit.staff.kit import write_kit
    out = out or os.path.join(root, MANIFEST_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        kit = os.path.join(tmp, "kit")
        write_kit(kit, root=root)
        reports = {}
        for name, stu in (("reference", os.path.join(root, PACKAGE)),
                          ("kit", os.path.join(kit, PACKAGE))):
            print(f"running the suite on the {name} ...", flush=True)
            report, proc = run_grading(stu, os.path.join(tmp, name + ".json"), hidden=hidden,
                                       manifest="none", cwd=root, sandbox="off")
            if report is None:
                raise SystemExit(f"the {name} run wrote no report:\n{proc.stdout[-3000:]}"
                                 f"\n{proc.stderr[-3000:]}")
            reports[name] = {r["test"]: r for r in report["tests"]}
    ref, kit = reports["reference"], reports["kit"]
    broken = [f"{t}: {r['result']} {r['message']}" for t, r in ref.items()
              if r["result"] not in ("passed", "skipped")]
    if broken:
        raise SystemExit("the reference does not pass its own tests:\n  " + "\n  ".join(broken))
    tests = {}
    for test_id, r in sorted(ref.items()):
        k = kit.get(test_id, {"result": "missing", "message": ""})
        graded = r["result"] == "passed" and k["result"] != "passed"
        tasks = re.findall(r"[A-Za-z_]\w*", k["message"].split("not implemented yet:", 1)[1]) \
            if "not implemented yet:" in k["message"] else []
        tests[test_id] = {"module": r["module"], "graded": graded, "hidden": r["hidden"],
                          "tasks": tasks, "category": category_for(test_id),
                          "experiment": experiment_for(test_id)}
    manifest = {"about": "tests that must exist when grading, and which are graded (pass on "
                "the reference, fail on the blank kit). Rebuild: python -m labkit.staff.grading "
                "manifest [--hidden DIR]", "tests": tests}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    n_graded = sum(v["graded"] for v in tests.values())
    print(f"{out}: {len(tests)} tests, {n_graded} graded "
          f"({sum(v['hidden'] for v in tests.values())} hidden), "
          f"{_manifest_points(tests)} points")
    return manifest


def _manifest_points(tests):
    graded = [t for t, v in tests.items() if v["graded"]]
    lab = sum(points_for(t, graded) for t in graded if category_for(t) == "lab")
    beyond = sum(points_for(t, graded) for t in graded if category_for(t) == "beyond")
    return f"lab {lab:g} + beyond {beyond:g}"


def main(argv=None):
    p = argparse.ArgumentParser(description="Grading tools for course staff.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifest", help="rebuild tests/grading_manifest.json from the "
                       "reference and a fresh kit (runs the suite twice)")
    m.add_argument("--hidden", help="hidden tests folder to include (e.g. tests_hidden)")
    m.add_argument("--out", help=f"where to write it (default {MANIFEST_NAME})")
    args = p.parse_args(argv)
    if args.command == "manifest":
        build_manifest(args.hidden and os.path.abspath(args.hidden), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
