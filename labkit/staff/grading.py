"""Grading with pytest (a plugin, registered from tests/conftest.py) and its manifest.

Active only with ``--grade``, ``--stu-dir``, ``--hidden``, ``--grade-json`` or
``--grade-csv``; a plain ``pytest -q`` is unchanged.

    python -m pytest --grade                          # grade ./stu_upload (the kit: yours)
    python -m labkit.staff.grade --stu-dir PATH       # grade another folder's stu_upload
    python -m labkit.staff.grade --stu-dir PATH --hidden tests_hidden --grade-json r.json
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

Grade another folder only through ``python -m labkit.staff.grade`` (labkit/staff/grade.py):
``python -m pytest --stu-dir PATH`` with a space lets pytest read PATH's ``pytest.ini`` and
import its ``conftest.py`` before this plugin runs (the plugin then refuses, too late).

With ``--stu-dir`` the student's code never runs in this process: it runs in a sandboxed
worker (``labkit/staff/sandbox/``, ``--sandbox``), the tests get proxies (``import stu_upload``
and the ``stu`` fixture), the drivers the tests start run in the sandbox too, the staff files
are fingerprinted before and after, and the grade is written here, atomically.
"""
import contextlib
import json
import os
import signal
import sys
import threading
import time

import pytest

from labkit.staff._stu_site.sitecustomize import PACKAGE, install
# the split modules' names, re-exported: every ``from labkit.staff.grading import X`` keeps working
from labkit.staff.feedback import (NOT_IMPLEMENTED_RE, _first_line,  # noqa: F401
                                   collect_error_message, teaching_message)
from labkit.staff.grading_cli import (_end_submission, _kill_group,  # noqa: F401
                                      _manifest_points, build_manifest, main, run_grading)
from labkit.staff.points import (CATEGORIES, DEFAULT_POINTS, DEFAULT_TIMEOUT,  # noqa: F401
                                 HIDDEN_PREFIX, LAB_RUBRIC, MANIFEST_NAME, MODULE_EXPERIMENT,
                                 NOT_SUBMITTED, POINTS, ROOT, STAFF_TESTS, Points, category_for,
                                 experiment_for, find_stu_package, lab_row, points_for)
from labkit.staff.reports import _atomic, _write_json, print_grade, write_grade_csv  # noqa: F401
from labkit.staff.sanitize import clean_report, clean_text
from labkit.staff.sandbox.drivers import _descendants, _sandbox_drivers, _uid_of  # noqa: F401

SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stu_site")


class TestTimeout(BaseException):
    """The per-test time limit ran out (a BaseException: ``except Exception`` won't hide it)."""


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
    g.addoption("--setup-timeout", type=float, default=None, metavar="SECONDS",
                help="time limit of a test's set-up, where module fixtures shared by many "
                "tests are built (default: 3 x --test-timeout; 0: none)")
    g.addoption("--sandbox", default="auto",
                choices=("auto", "bwrap", "uid", "none", "off"),
                help="with --stu-dir: how student code is isolated (auto: the strongest that "
                "works here; off: import it into the grader, unsafe, for comparisons only)")
    g.addoption("--sandbox-memory", type=float, default=4.0, metavar="GIB",
                help="memory limit (address space) of the student's processes, GiB")
    g.addoption("--skip-ungraded", action="store_true",
                help="run the graded tests only: the ungraded checks (no student task affects "
                "them, 0 points) are left out, so the points are the same, sooner (a batch)")
    g.addoption("--grader-memory", type=float, default=None, metavar="GIB",
                help="sandboxed: a limit on the grader's own data (what the submission's "
                "answers make it hold), GiB (default: 6)")
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
    """Grade only with this repository's configuration. pytest picks its rootdir and ini file,
    and imports the ``conftest.py`` of the paths it is given, before it knows plugin options:
    in ``--stu-dir PATH`` (a space) it takes PATH for a test path, and the student's
    ``pytest.ini``/``conftest.py`` may already have run. Refuse then (exit 4, one message:
    grade with ``python -m labkit.staff.grade``, which fixes ``-c``, ``--rootdir`` and
    writes OPTION=VALUE): a rootdir or ini file other than this repository's, or a test path
    outside the repository and the hidden tests folder."""
    how = "grade with 'python -m labkit.staff.grade --stu-dir PATH ...'"
    root, inv = str(config.rootpath), str(config.invocation_params.dir)
    ini = str(config.inipath) if config.inipath else None
    if root != ROOT or ini != os.path.join(ROOT, "pytest.ini"):
        raise pytest.UsageError(
            f"pytest chose {root} as its rootdir ({ini or 'no ini file'}), not this "
            f"repository ({ROOT}): the value of an option written with a space was taken for a "
            f"test path, and that folder's pytest.ini/conftest.py may have run; not graded: "
            f"{how}")
    hidden = config.getoption("hidden")
    hidden = os.path.normpath(os.path.join(inv, hidden)) if hidden else None

    def outside(arg):
        path = os.path.normpath(os.path.join(inv, str(arg).partition("::")[0]))
        return not any(path == d or path.startswith(d + os.sep) for d in (ROOT, hidden) if d)
    args = list(config.invocation_params.args)
    for opt, value in zip(args, args[1:]):     # pytest's first pass took VALUE for a test path
        if opt in PATH_OPTIONS and opt != "--hidden" and outside(value):
            raise pytest.UsageError(
                f"{opt} {value}: written with a space, pytest took {value} for a test path "
                f"before this plugin ran (its conftest.py may have run); not graded: {how}")
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        for arg in config.args:
            if outside(arg):
                raise pytest.UsageError(
                    f"{arg}: a test path outside this repository ({ROOT}); not graded (its "
                    f"conftest.py may have run): {how}")


class Grader(Points):
    def __init__(self, config):
        self.config = config
        self.root = str(config.rootpath)
        self.timeout = config.getoption("test_timeout") or 0
        setup = config.getoption("setup_timeout")
        self.setup_timeout = 3 * self.timeout if setup is None else setup
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
        self.session = None
        self._shared_fixtures = {}      # id -> module/session FixtureDef (FixtureRefresh)
        self.sandbox_mode = "off" if stu else None
        self.integrity_before = None
        hidden_opt = config.getoption("hidden")
        files = self.stu_pkg
        if stu and config.getoption("sandbox") != "off":
            self._start_sandbox(config, hidden_opt)     # copies the submission (no links)
            files = self.session.sandbox.scratch.package    # read that copy, never the
        # experiments whose files were submitted (either naming); the others are not counted
        self.experiments_present = (experiments_present(files)      # original again
                                    if os.path.isdir(files) else {})
        if stu and self.session is None:
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
        self.hidden_args = []       # hidden test files named (a split grading's part)
        if self.hidden_dir:
            if not os.path.isdir(self.hidden_dir):
                raise pytest.UsageError(f"--hidden {hidden}: no such folder")
            self.selected_args = list(config.args)
            if config.args_source != pytest.Config.ArgsSource.ARGS:
                self.selected_args = []
            inv = str(config.invocation_params.dir)
            self.hidden_args = [a for a in self.selected_args if self._in_hidden(
                os.path.normpath(os.path.join(inv, str(a).partition("::")[0])))]
            if not self.hidden_args:        # else only the hidden files named run
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
        elif config.getoption("skip_ungraded"):
            raise pytest.UsageError("--skip-ungraded needs the grading manifest (it says "
                                    "which tests are graded); not with --grade-manifest none")
        config.option.continue_on_collection_errors = True
        if config.option.tbstyle == "auto" and not any(
                a.startswith("--tb") for a in config.invocation_params.args):
            config.option.tbstyle = "no"

    def _start_sandbox(self, config, hidden):
        from labkit.staff.sandbox import integrity
        from labkit.staff.sandbox.client import Session, install_proxy_package
        from labkit.staff.sandbox.process import GIB, Limits, SandboxError
        from labkit.staff.sandbox.process import GRADER_MEMORY, limit_grader_memory
        memory = config.getoption("sandbox_memory")
        if not memory > 0:
            raise pytest.UsageError("--sandbox-memory must be > 0 (GiB)")
        own = config.getoption("grader_memory")
        if own is not None and not 0 < own < 1e6:
            raise pytest.UsageError("--grader-memory must be > 0 (GiB)")
        limit_grader_memory(GRADER_MEMORY if own is None else int(own * GIB))
        call_timeout = config.getoption("call_timeout") or self.timeout or 0
        self.integrity_before = integrity.fingerprint(self.root, hidden and
                                                      os.path.abspath(hidden))
        try:
            self.session = Session(self.stu_pkg, mode=config.getoption("sandbox"),
                                   limits=Limits(memory=int(memory * GIB)),
                                   timeout=call_timeout,
                                   hidden=hidden and os.path.abspath(hidden))
        except SandboxError as exc:
            raise pytest.UsageError(str(exc))
        self.sandbox_mode = self.session.mode
        info = os.environ.get("LABKIT_SANDBOX_INFO")
        if info:            # for batch_grade: whose processes to end if it must kill us
            _write_json(info, {"uid": self.session.sandbox.uid,
                               "token": self.session.sandbox.token,
                               "scratch": self.session.sandbox.scratch.path,
                               "cgroups": self.session.sandbox.cgroup.paths})
        install_proxy_package(self.session)
        from labkit.runtime.student import use_export_hook, use_package_dir, use_seed_hook
        use_package_dir(self.session.sandbox.scratch.package)  # file names only (the copy)
        use_seed_hook(self.session.seed_numpy)      # np.random.seed in the worker too
        use_export_hook(self.session.export)        # a test's layers/functions for student code
        if not config.option.basetemp:          # the tests' files: where drivers may write
            config.option.basetemp = os.path.join(self.session.sandbox.scratch.tmp, "t")
        scratch = self.session.sandbox.scratch  # ... and the student's code reads and writes
        self.session.before_call = scratch.give    # fds only, no link followed
        _sandbox_drivers(self.session)

    # -- ids ------------------------------------------------------------------------------
    def _in_hidden(self, full):
        return bool(self.hidden_dir) and (full == self.hidden_dir or
                                          full.startswith(self.hidden_dir + os.sep))

    def canonical(self, nodeid):
        path, sep, rest = nodeid.partition("::")
        full = os.path.normpath(os.path.join(self.root, path))
        if self._in_hidden(full):
            rel = os.path.relpath(full, self.hidden_dir).replace(os.sep, "/")
            return HIDDEN_PREFIX + rel + sep + rest
        return nodeid

    def _sanitize(self, text):
        text = clean_text(text)         # the submission's text: no escapes, valid UTF-8
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
            clean_report(report)            # what pytest prints itself

    def pytest_deselected(self, items):
        self.deselected.update(self.canonical(i.nodeid) for i in items)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        """--skip-ungraded: the manifest's ungraded checks are deselected (worth 0 points:
        the grade is the same). A test the manifest does not list still runs."""
        if not config.getoption("skip_ungraded") or self.manifest is None:
            return
        tests = self.manifest.get("tests", {})
        keep, drop = [], []
        for item in items:
            info = tests.get(self.canonical(item.nodeid))
            (drop if info is not None and not info.get("graded", True) else keep).append(item)
        if drop:
            items[:] = keep
            config.hook.pytest_deselected(items=drop)

    @contextlib.contextmanager
    def _time_limit(self, limit=None):
        """SIGALRM after ``limit`` (default --test-timeout) seconds (main thread, where
        setitimer exists)."""
        limit = self.timeout if limit is None else limit
        if not limit or not hasattr(signal, "setitimer") or \
                threading.current_thread() is not threading.main_thread():
            yield
            return

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
    def pytest_fixture_setup(self, fixturedef, request):
        yield
        if self.session is not None and fixturedef.scope != "function":
            self._shared_fixtures[id(fixturedef)] = fixturedef

    def _refresh_fixtures(self, item):
        """FixtureRefresh: a module or session fixture whose value holds student objects of
        a worker that has ended since (a time limit, a crash of another test) is made again
        for this test, so a restart costs only the tests that call the broken code, not
        every later test of the module (``object ... was lost``)."""
        from labkit.staff.sandbox.client import holds_stale
        for defs in getattr(item, "_fixtureinfo").name2fixturedefs.values():
            for fd in defs:
                if id(fd) in self._shared_fixtures and fd.cached_result is not None and \
                        holds_stale(fd.cached_result[0], self.session):
                    try:        # its teardown (and its dependants'), then made anew
                        fd.finish(item._request)
                    except Exception:       # a teardown that used the lost objects
                        pass
                    fd.cached_result = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        if self.session is not None:
            self._refresh_fixtures(item)
        with self._time_limit(self.setup_timeout):
            yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        with self._time_limit():
            yield

    def pytest_runtest_logreport(self, report):
        try:
            self._record(report)
        finally:
            clean_report(report)            # what pytest prints itself (short summary)

    def _record(self, report):
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
            self.results[test_id] = {"result": "skipped", "message": self._sanitize(
                teaching_message(report, self.timeout))}
        elif report.when == "call":
            self.results[test_id] = {"result": "passed", "message": ""}
        if report.when == "teardown" and self.config.getoption("grade_json") and \
                time.monotonic() - self._last_partial > 1.0:
            self._last_partial = time.monotonic()      # partial result, should we be killed
            grade = self.finish(self.compute(), incomplete=True)
            _write_json(self.config.getoption("grade_json"), grade)

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
        self.worker_output = self.redact(clean_text(self.session.sandbox.scratch.output()))
        self.session.close()
        hidden = self.config.getoption("hidden")
        after = integrity.fingerprint(self.root, hidden and os.path.abspath(hidden))
        self.integrity_changes = integrity.changes(self.integrity_before, after)
        return self.integrity_changes

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter):
        yield                               # after pytest's own summary: the grade comes last
        self.finish_sandbox()
        changed = getattr(self, "integrity_changes", None)
        grade = self.finish(self.compute(), changed=changed)
        if self.session is not None:
            grade["worker_output"] = getattr(self, "worker_output", "")
        try:
            print_grade(terminalreporter, grade, changed,
                        ungraded_run=not self.config.getoption("skip_ungraded"))
        except BrokenPipeError:     # (`| head -1`): the reports below are written all the same
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        if self.config.getoption("grade_json"):
            _write_json(self.config.getoption("grade_json"), grade)
        if self.config.getoption("grade_csv"):
            write_grade_csv(self.config.getoption("grade_csv"), grade)


if __name__ == "__main__":
    sys.exit(main())
