"""Where the time of a grading goes: a pytest plugin for the grader's process.

    python -m labkit.staff.grade --stu-dir PATH -p labkit.staff.profile --grade-profile=prof.json ...
    python benchmarks/bench_grading.py --profile          # runs it and prints the table

Per test (setup, call and teardown together) it records: the wall time; the time spent
starting sandboxed workers; each fixture's setup time (fixture builds and loads: the lab
fixture, recorded data); driver subprocesses (count and wall time); the round trips into
student code (count, wall time: the student's own compute plus the protocol) and the
grader's code that student code called back (``callback``, not counted as the student's);
the protocol's bytes each way. What is left of a test's wall time is the grader's own compute
(reference values, comparisons), reported as ``grader``. Measuring only: nothing here changes what is graded. The numbers are wall-clock
times in the grader's process, so on a loaded machine they include waiting for a CPU.
"""
import json
import os
import subprocess
import time

import pytest

_POPEN = subprocess.Popen           # the real class (the sandbox's subclass calls into it)
FIELDS = ("wall", "setup", "call", "teardown", "worker_start", "worker_starts", "fixtures",
          "drivers", "driver_wall", "student_calls", "student", "callback", "bytes_out",
          "bytes_in", "subprocesses", "subprocess_wall")


def pytest_addoption(parser):
    parser.getgroup("grading").addoption(
        "--grade-profile", metavar="PATH",
        help="write where the time of each test goes as JSON (labkit.staff.profile)")


def pytest_configure(config):
    path = config.getoption("grade_profile")
    if path:
        config.pluginmanager.register(Profiler(os.path.abspath(path)), "labkit-profiler")


class Profiler:
    def __init__(self, path):
        self.path = path
        self.tests = {}
        self.current = self._blank()
        self.outside = self._blank()        # before the first test (configure: worker start)
        self.fixture_totals = {}
        self.start = time.perf_counter()
        self.stack = []
        self._patch()

    @staticmethod
    def _blank():
        d = {k: 0 for k in FIELDS}
        d["fixtures"] = {}
        return d

    def _add(self, key, value):
        self.current[key] += value

    # exclusive timers: time goes to the innermost of worker_start / student / callback
    def _push(self, cat):
        now = time.perf_counter()
        if self.stack:
            self._add(self.stack[-1][0], now - self.stack[-1][1])
        self.stack.append([cat, now])

    def _pop(self):
        now = time.perf_counter()
        cat, t = self.stack.pop()
        self._add(cat, now - t)
        if self.stack:
            self.stack[-1][1] = now

    # -- instruments ---------------------------------------------------------------------
    def _patch(self):
        prof = self
        from labkit.staff.sandbox import client, wire
        S = client.Session
        start, request, callback, read_answer = S._start, S._request, S._callback, \
            S._read_answer
        pack_parts = wire.pack_parts

        def timed_start(self_):
            prof._push("worker_start")
            prof._add("worker_starts", 1)
            try:
                return start(self_)
            finally:
                prof._pop()

        def timed_request(self_, header, blobs, timeout):
            if prof.stack and prof.stack[-1][0] == "worker_start":
                return request(self_, header, blobs, timeout)   # the first import: start-up
            prof._push("student")
            prof._add("student_calls", 1)
            try:
                return request(self_, header, blobs, timeout)
            finally:
                prof._pop()

        def timed_callback(self_, header, blobs):
            prof._push("callback")
            try:
                return callback(self_, header, blobs)
            finally:
                prof._pop()

        def counted_read(self_, deadline):
            header, blobs = read_answer(self_, deadline)
            prof._add("bytes_in", sum(map(len, blobs)) + len(json.dumps(header)) + 12)
            return header, blobs

        def counted_pack(header, blobs):       # (wire.pack joins these parts too)
            parts = pack_parts(header, blobs)
            prof._add("bytes_out", sum(memoryview(p).nbytes for p in parts))
            return parts

        S._start, S._request, S._callback, S._read_answer = \
            timed_start, timed_request, timed_callback, counted_read
        wire.pack_parts = counted_pack

        init, wait = _POPEN.__init__, _POPEN.wait

        def popen_init(self_, args, *a, **kw):
            self_._labkit_t0 = time.perf_counter()
            init(self_, args, *a, **kw)

        def popen_wait(self_, *a, **kw):
            out = wait(self_, *a, **kw)
            t0 = self_.__dict__.pop("_labkit_t0", None)
            if t0 is not None:
                dt = time.perf_counter() - t0
                if getattr(self_, "_labkit_uid", None) is not None or \
                        any("main_exp_" in str(x) for x in (self_.args if isinstance(
                            self_.args, (list, tuple)) else [self_.args])):
                    prof._add("drivers", 1)
                    prof._add("driver_wall", dt)
                else:
                    prof._add("subprocesses", 1)
                    prof._add("subprocess_wall", dt)
            return out

        _POPEN.__init__, _POPEN.wait = popen_init, popen_wait

    # -- hooks ---------------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current = self._blank()
        t = time.perf_counter()
        yield
        self.current["wall"] = time.perf_counter() - t
        self.tests[item.nodeid] = self.current
        self.current = self._blank()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        t = time.perf_counter()
        yield
        dt = time.perf_counter() - t
        name = fixturedef.argname
        self.current["fixtures"][name] = self.current["fixtures"].get(name, 0) + dt
        self.fixture_totals[name] = self.fixture_totals.get(name, 0) + dt

    def pytest_runtest_logreport(self, report):
        self.current[report.when] = self.current.get(report.when, 0) + report.duration

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session):
        total = self._blank()
        for d in [self.outside, *self.tests.values()]:
            for k in FIELDS:
                if k != "fixtures":
                    total[k] += d[k]
        for d in self.tests.values():       # what is left: the grader's own work
            d["grader"] = max(0.0, d["wall"] - d["worker_start"] - d["student"]
                              - d["driver_wall"] - d["subprocess_wall"]
                              - sum(d["fixtures"].values()))
        total["grader"] = sum(d["grader"] for d in self.tests.values())
        total["fixtures"] = self.fixture_totals
        total["session_wall"] = time.perf_counter() - self.start
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump({"tests": self.tests, "before_tests": self.outside, "total": total}, f,
                      indent=1)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session):
        self.current = self.outside          # worker start, imports: before the first test
