"""The grader's side: a Session talks to one submission's worker; proxies make the worker's
objects look like local ones (``stu.layer_1.FullyConnectedLayer(7, 5).forward(x)``).

Only plain data crosses (``wire``); the grader never unpickles or evaluates anything from the
worker. A call that runs past the time limit kills the worker's whole process group, raises
``StudentTimeout`` and the next call starts a fresh worker; a worker that dies fails only
the call it was serving. Objects made by a worker that ended cannot be used again
(``StudentError``); modules, classes and functions are found again by name.
"""
import builtins
import importlib
import os
import re
import select
import sys
import subprocess
import threading
import time
import types

from labkit.staff.sandbox import wire
from labkit.staff.sandbox.process import GIB, PACKAGE, WORKER_DIR, Sandbox
from labkit.staff.sanitize import clean_text

MSG_CAP = 2000
OUT_CAP = 64 * 1024
MAX_ANSWER = 1024 ** 3          # bytes of arrays in one message from the worker (the grader
#     reads no more: a bigger frame ends the worker). The largest a correct submission sends
#     is exp 3.2's fc6 weights, float64, handed to the grader's pycnml loadParams: 784 MiB
#     (a 256 MiB cap failed both exp 3.2 lab rows of the reference). Read once, in place
#     (load_array), so the grader holds it once.


def _clean(text):
    """Printable text only (no terminal escapes from student prints)."""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)


class StudentError(Exception):
    """An exception raised by student code in the worker (type name and message, capped)."""
    student_type = "Exception"


class StudentTimeout(StudentError):
    """A call to student code ran past the time limit; the worker was killed."""


class StudentCrash(StudentError):
    """The worker ended while serving a call (os._exit, a signal, a limit)."""


class StudentMemoryError(StudentError):
    """Student code hit the memory limit."""


_SAFE_BUILTINS = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type) and
                  issubclass(getattr(builtins, n), Exception) and
                  not issubclass(getattr(builtins, n), (Warning, StopIteration,
                                                       StopAsyncIteration))}
_SYNTH = {}


def student_exception_class(module, name, base):
    """A local stand-in for the student package's exception class ``module.name`` (cached,
    so ``pytest.raises(stu._base.BackwardBeforeForwardError)`` matches what calls raise)."""
    key = (module, name)
    if key not in _SYNTH:
        bases = (StudentError,)
        if base in _SAFE_BUILTINS:
            bases = (StudentError, getattr(builtins, base))
        try:
            cls = type(name, bases, {"student_type": name, "__module__": "student." + module})
        except TypeError:
            cls = type(name, (StudentError,), {"student_type": name})
        _SYNTH[key] = cls
    return _SYNTH[key]


def _cap(text, n=MSG_CAP):
    """Text from the worker (names, messages): cleaned (labkit/staff/sanitize.py) and
    bounded before anything here prints, stores or raises it."""
    return clean_text(text, n)


def make_exception(err, limits=None):
    """The local exception for the worker's error report (never evaluated: names only)."""
    if not isinstance(err, dict):
        return StudentCrash("malformed error report from the worker")
    tname = _cap(err.get("type", "Exception"), 100)
    module = _cap(err.get("module", ""), 100)
    msg = _cap(err.get("msg", ""))
    bases = [b for b in err.get("bases", []) if isinstance(b, str)]
    if "MemoryError" in bases:
        mem = f" of {limits.memory / GIB:g} GiB" if limits else ""
        return StudentMemoryError(f"memory limit{mem} reached (MemoryError in student code: "
                                  f"{msg})")
    if module == "builtins" and tname in _SAFE_BUILTINS:
        return getattr(builtins, tname)(msg)
    if re.fullmatch(r"labkit\.runtime\.[a-z_0-9]{1,40}", module):  # the kit's own errors
        # (UserError, QuantFileError ...): this process's class of that name
        try:
            cls = getattr(importlib.import_module(module), tname)
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    return cls(msg)
                except Exception:
                    pass
        except (ImportError, AttributeError, ValueError):
            pass
    if module == PACKAGE or module.startswith(PACKAGE + "."):
        base = next((b for b in bases if b in _SAFE_BUILTINS), "Exception")
        exc = student_exception_class(module, tname, base)(msg)
        return exc
    exc = StudentError(f"{tname}: {msg}" if msg else tname)
    exc.student_type = tname
    return exc


# ------------------------------------------------------------------------------- session
class Session:
    """One submission: its sandbox and the worker serving it now."""

    def __init__(self, stu_pkg, mode="auto", limits=None, timeout=60.0, base=None,
                 hidden=None):
        self.sandbox = Sandbox(stu_pkg, mode=mode, limits=limits, base=base, hidden=hidden)
        self.mode, self.limits = self.sandbox.mode, self.sandbox.limits
        self.timeout = timeout
        self.proc = None
        self.generation = 0
        self.init_error = None
        self.init_done = False
        self.events = []            # what happened: time limits, crashes (for the report)
        self.lock = threading.RLock()
        self.stragglers = 0
        self.closed = False
        self._release = []
        self._pending = []          # RemoteMethods read, not called yet (weak references)
        self.driver_server = None   # the sandbox's fork server, when tests start drivers
        self.modules = {}
        self.exports = {}           # id -> (grader object, method names) handed to students
        self.export_ids = {}        # id(object) -> its export id
        self.before_call = None     # run before each call into student code (the grader's)
        self._oom_seen = 0

    # -- the worker -----------------------------------------------------------------------
    def _start(self):
        sb = self.sandbox
        r1, w1 = os.pipe()          # grader -> worker
        r2, w2 = os.pipe()          # worker -> grader
        for fd in (w1, w2):         # 1 MiB (Linux; else as it is): big arrays cross in
            _pipe_size(fd, 1 << 20)  # fewer turns (800 MB took 3.5 s, not the copy)
        env = {"LABKIT_WORKER_IN": str(r1), "LABKIT_WORKER_OUT": str(w2)}
        if self.init_error is not None:
            env["LABKIT_WORKER_NOINIT"] = "1"
        argv = sb.python() + [os.path.join(sb.scratch.code, WORKER_DIR, "worker.py")]
        try:
            self.proc = sb.popen(argv, env=env, pass_fds=(r1, w2))
        finally:
            os.close(r1)
            os.close(w2)
        self.wfd, self.rfd = w1, r2
        os.set_blocking(self.wfd, False)
        self.generation += 1
        self._release = []
        if not self.init_done:          # stu_upload/__init__.py runs once, in the first worker
            self.init_done = True
            try:
                header, _ = self._request({"op": "import", "module": PACKAGE}, [],
                                          self.timeout)
                err = header.get("err")
                if err is not None:
                    exc = make_exception(err, self.limits)
                    err = f"{_cap(err.get('type', ''), 100)}: {exc}"
            except StudentError as exc:
                err = f"{type(exc).__name__}: {exc}"
            if err is not None:             # its submodules may still work: without it
                self.init_error = err
                self.events.append(f"{PACKAGE}/__init__.py failed: {err}")
                if self.proc is not None:
                    self._kill()
                self._start()

    def _kill(self):
        # a new generation now, not at the next start: a handle encoded from here on for the
        # old worker's objects is seen as stale (never sent to the next worker, where its id
        # would name nothing, or another object)
        self.generation += 1
        self._release = []
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.stragglers += self.sandbox.kill(self.proc)
        self.proc = None

    def _died(self):
        """Why the worker ended (it closed its pipe)."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._kill()
        if code is None:
            why = "closed its connection"
        elif code < 0:
            sig = -code
            why = {9: "was killed (SIGKILL; the memory limit or the system's OOM killer)",
                   24: "ran past its CPU-time limit (SIGXCPU)",
                   25: "wrote past the file-size limit (SIGXFSZ)",
                   11: "crashed (segmentation fault)"}.get(sig, f"was killed by signal {sig}")
        else:
            why = f"exited with code {code} (os._exit or sys.exit outside a call)"
            if self.sandbox.mode == "bwrap" and code in (128 + 9, 137):
                why = "was killed (SIGKILL; the memory limit or the system's OOM killer)"
        watcher = getattr(self.sandbox, "watcher", None)
        if watcher is not None and watcher.violation:
            why = f"was killed: {watcher.violation}"
            watcher.violation = None
        return self._crash(self._oom_why() or why)

    def _crash(self, why):
        self.events.append("worker " + why)
        return StudentCrash(f"the student code's process {why}")

    def _oom_why(self):
        """Why, if the kernel killed one of the submission's processes for memory since the
        last look (its cgroup's OOM count rose); else None."""
        oom = self.sandbox.cgroup.oom_kills()
        if oom <= self._oom_seen:
            return None
        self._oom_seen = oom
        return (f"was killed by the kernel: the submission's processes together passed "
                f"the memory limit of {self.limits.total_memory / GIB:g} GiB")

    def _request(self, header, blobs, timeout):
        if self.proc is None:
            self._start()
        if self._release:        # the handles dropped since: released with this request
            header = dict(header, release=self._release)
            self._release = []
        frame = wire.pack_parts(header, blobs)
        deadline = time.monotonic() + timeout if timeout else None
        try:
            self._write(frame, deadline)
            while True:
                answer, ans_blobs = self._read_answer(deadline)
                if "cb" not in answer:
                    return answer, ans_blobs
                self._write(self._callback(answer, ans_blobs), deadline)
        except TimeoutError:
            self._kill()
            self.events.append(f"time limit of {timeout:g} s")
            raise StudentTimeout(f"time limit of {timeout:g} s exceeded in student code (an "
                                 f"endless loop, or far too slow); its process was killed")
        except wire.WireError as exc:
            self._kill()
            raise StudentCrash(f"the student code's process sent a malformed answer ({exc})")
        except MemoryError:         # the grader's own limit (limit_grader_memory), mid-answer
            self._kill()
            raise StudentCrash("the student code's answer is more than the grader may hold "
                               "(its memory limit, --grader-memory): return arrays of the "
                               "shapes asked for") from None
        except BaseException:       # the grader's own per-test limit, Ctrl-C: end the worker
            if self.proc is not None:
                self._kill()
            raise

    def _write(self, frame, deadline):
        """Write ``frame`` (bytes, or its parts: wire.pack_parts) within ``deadline``."""
        for part in ([frame] if isinstance(frame, (bytes, bytearray)) else frame):
            view = memoryview(part).cast("B")
            while view:
                try:        # (non-blocking: as much as the pipe takes now)
                    n = os.write(self.wfd, view[:1 << 20])
                except BlockingIOError:
                    n = 0
                except BrokenPipeError:
                    raise self._died()
                view = view[n:]
                if not view:
                    break
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if left == 0.0:
                    raise TimeoutError
                select.select([], [self.wfd], [], left)

    def _callback(self, header, blobs):
        """Run the grader object that student code called (only an exported object, only
        its listed methods); the answer frame. Its time counts in the call's time limit."""
        cb = header.get("cb")
        try:
            if not isinstance(cb, dict) or not isinstance(cb.get("id"), int):
                raise wire.WireError("malformed callback")
            entry = self.exports.get(cb["id"])
            name = cb.get("name")
            if entry is None:
                raise LookupError("no such grader object")
            obj, methods = entry
            if name is None:
                if "__call__" not in methods:
                    raise TypeError(f"this {type(obj).__name__} is not callable")
                fn = obj
            elif isinstance(name, str) and name in methods:
                fn = getattr(obj, name)
            else:
                raise AttributeError(f"{type(obj).__name__} offers only "
                                     f"{', '.join(sorted(methods - {'__call__'}))}")
            gen = self.generation
            value = wire.decode(header.get("args"), blobs,
                                on_handle=lambda h: Remote._make(self, gen, h),
                                on_grader=self._exported)
            if not isinstance(value, dict) or set(value) != {"args", "kwargs"}:
                raise wire.WireError("malformed callback arguments")
            result = fn(*value["args"], **value["kwargs"])
            tree, out = self.encode(result)
            return wire.pack_parts({"cbok": tree}, out)
        except (wire.WireError, StudentError):     # the worker is gone or misbehaved
            raise
        except KeyboardInterrupt as exc:    # the grader's own (a test's hook, Ctrl-C): the
            self._interrupt = exc           # student's code is interrupted where it called,
            return wire.pack({"cbint": 1}, [])  # the worker lives on; request() raises exc
        except Exception as exc:
            return wire.pack({"cberr": _cap(f"{type(exc).__name__}: {exc}")}, [])

    def _exported(self, gid):
        entry = self.exports.get(gid)
        if entry is None:
            raise wire.WireError("unknown grader reference")
        return entry[0]

    def export(self, obj, methods=("forward", "backward")):
        """Hand the grader's ``obj`` to student code: in the worker it is a stand-in whose
        ``methods`` (``"__call__"``: the object itself) run here, in the grader, when
        student code calls them. For a test's own layers and functions, never for staff
        tools a submission could misuse."""
        gid = self.export_ids.get(id(obj))
        if gid is None or self.exports[gid][1] != frozenset(methods):
            gid = len(self.exports) + 1
            self.exports[gid] = (obj, frozenset(methods))     # kept alive: ids stay unique
            self.export_ids[id(obj)] = gid
        return Exported(gid)

    def _read_exact(self, n, deadline):
        return bytes(self._read_into(n, deadline))

    def _read_into(self, n, deadline):
        """``n`` bytes into one bytearray (no chunks joined: the answer is held once)."""
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait == 0.0:
                raise TimeoutError
            r, _, _ = select.select([self.rfd], [], [], wait)
            if not r:
                raise TimeoutError
            k = os.readv(self.rfd, [view[got:got + (1 << 22)]])
            if not k:
                raise self._died()
            got += k
        return buf

    def _read_answer(self, deadline):
        n = wire.unpack_header(self._read_exact(12, deadline))
        header, sizes = wire.parse_header(self._read_exact(n, deadline))
        total = sum(sizes)
        if total > MAX_ANSWER:
            raise wire.WireError(f"an answer of {total / 1024 ** 2:.0f} MiB (the grader reads "
                                 f"at most {MAX_ANSWER / 1024 ** 2:g} MiB)")
        blobs = [self._read_into(s, deadline) for s in sizes]
        return header, blobs

    # -- requests -------------------------------------------------------------------------
    def request(self, op, timeout=None, blobs=(), _calling=None, **fields):
        """Send one request; the decoded answer, or the student's exception raised here.
        (``_calling``: the RemoteMethod this request calls; every other one read but not yet
        called is read from the worker first.)"""
        with self.lock:
            if self.closed:
                raise StudentCrash("grading of this submission has ended")
            gen = self.generation
            self.read_pending(_calling)
            if self.generation != gen and "target" in fields:   # (encoded for a worker that
                raise self._crash("ended while a method read earlier was read")   # is gone)
            if op in ("call", "setattr", "setitem") and self.before_call is not None:
                self.before_call()
            self._interrupt = None
            try:
                header, ans_blobs = self._request(dict(fields, op=op), list(blobs),
                                                  self.timeout if timeout is None else timeout)
            finally:
                interrupt, self._interrupt = getattr(self, "_interrupt", None), None
            if interrupt is not None:       # a grader callback raised KeyboardInterrupt: the
                raise interrupt             # grader's (never one the worker reports)
            why = self._oom_why()
            if why is not None:     # the kernel picks its victim: a child killed for memory
                self._kill()        # leaves the worker going, with an answer not to be trusted
                raise self._crash(why)
            gen = self.generation
            out = header.get("out")
            if isinstance(out, str) and out:    # the student's prints: where tests see them
                sys.stdout.write(_clean(out[:OUT_CAP]))
            if "err" in header:
                raise make_exception(header["err"], self.limits)
            if "ok" not in header:
                self._kill()
                raise StudentCrash("the student code's process sent a malformed answer")
            try:
                return wire.decode(header["ok"], ans_blobs,
                                   on_handle=lambda h: Remote._make(self, gen, h),
                                   on_grader=self._exported)
            except wire.WireError as exc:
                self._kill()
                raise StudentCrash(f"the student code's process sent a malformed answer "
                                   f"({exc})")

    def read_pending(self, calling=None):
        """Read from the worker every RemoteMethod read but not called yet (but ``calling``):
        before anything is encoded for a request, so a worker that ends meanwhile (a time
        limit in such a read) leaves no handle of its objects in that request."""
        with self.lock:
            pending, self._pending = self._pending, []
            for ref in pending:
                m = ref()
                if m is not None and m is not calling and \
                        object.__getattribute__(m, "_value") is None:
                    m._resolve()

    def share(self, path):
        """The path under which the worker can read the grader's file ``path`` (read-only;
        test data such as the full-size lab fixture)."""
        return self.sandbox.scratch.share(path)

    def seed_numpy(self, seed):
        """``np.random.seed(seed)`` in the worker (NumPy's global generator there)."""
        self.request("seed", seed=int(seed))

    def encode(self, value):
        return wire.encode(_unwrap(value, self), handle_of=None)

    def close(self):
        with self.lock:
            if self.proc is not None:
                self._kill()
            self.closed = True
            if self.driver_server is not None:
                self.driver_server.close()
            self.stragglers += self.sandbox.close()
        return self.stragglers


def holds_stale(value, session, depth=3):
    """Whether ``value`` (a fixture's value: containers, plain objects a few levels deep)
    holds a student object of ``session`` that no live worker has any more (its worker was
    killed or restarted). Module-level classes and functions are found again by name and do
    not count."""
    if isinstance(value, RemoteMethod):
        resolved = object.__getattribute__(value, "_value")
        value = resolved if resolved is not None else object.__getattribute__(value, "_owner")
    if isinstance(value, Remote):
        try:
            if object.__getattribute__(value, "_s") is not session or \
                    object.__getattribute__(value, "_path") is not None:
                return False
            return object.__getattribute__(value, "_gen") != session.generation
        except AttributeError:
            return False
    if depth <= 0 or isinstance(value, (str, bytes, int, float, type, types.ModuleType)):
        return False
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        try:
            items = list(vars(value).values())
        except TypeError:
            return False
    return any(holds_stale(v, session, depth - 1) for v in items[:1000])


class Exported:
    """A grader object handed to student code (``Session.export``), as the grader passes it."""
    __slots__ = ("id",)

    def __init__(self, gid):
        self.id = gid


def _unwrap(value, session):
    """Replace Remote proxies by their handles (only this session's, this generation's)."""
    if isinstance(value, Exported):
        return wire.GraderRef(value.id)
    if isinstance(value, RemoteMethod):
        value = value._resolved()           # the method as read (a grader object, if set so)
        if not isinstance(value, Remote):
            return _unwrap(value, session)
    if isinstance(value, Remote):
        return value._handle_for(session)
    gid = session.export_ids.get(id(value))
    if gid is not None and session.exports[gid][0] is value:   # came back from student code
        return wire.GraderRef(gid)
    if type(value) in (list, tuple):
        return type(value)(_unwrap(v, session) for v in value)
    if type(value) is dict:
        return {k: _unwrap(v, session) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------- proxies
class Remote:
    """A worker object seen from the grader: attribute reads and writes, calls, items and
    length go through the protocol. ``_path``: how to find it again (module, names) when it
    is a module-level class or function and the worker was restarted."""
    __slots__ = ("_s", "_gen", "_h", "_path", "__weakref__")

    @staticmethod
    def _make(session, gen, h, path=None):
        if h.kind == "exception":
            module, _, rest = h.type.partition(":")
            name, _, base = rest.partition(":")
            return student_exception_class(module, name, base)
        cls = {"class": RemoteClass, "callable": RemoteCallable}.get(h.kind, Remote)
        r = object.__new__(cls)
        object.__setattr__(r, "_s", session)
        object.__setattr__(r, "_gen", gen)
        object.__setattr__(r, "_h", h)
        object.__setattr__(r, "_path", path)
        return r

    def _handle_for(self, session):
        s = object.__getattribute__(self, "_s")
        if s is not session:
            raise TypeError("a student object from another submission")
        if object.__getattribute__(self, "_gen") != s.generation:
            path = object.__getattribute__(self, "_path")
            if path is None:
                raise StudentCrash(f"this {object.__getattribute__(self, '_h').type} object "
                                   f"was lost: the student process that held it ended "
                                   f"earlier ({'; '.join(s.events[-1:]) or 'restarted'})")
            fresh = s.request("getattr", target=_module_handle(s, path[0]), name=path[1])
            fresh_h = object.__getattribute__(fresh, "_h")
            object.__setattr__(self, "_h", fresh_h)
            object.__setattr__(self, "_gen", s.generation)
        return object.__getattribute__(self, "_h")

    def _target(self):
        s = object.__getattribute__(self, "_s")
        s.read_pending()
        tree, _ = wire.encode(self._handle_for(s))
        return s, tree

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if name in object.__getattribute__(self, "_h").methods:
            return RemoteMethod._bind(self, name)     # found when called: one request
        s, t = self._target()
        try:
            return s.request("getattr", target=t, name=name)
        except AttributeError as exc:
            raise AttributeError(str(exc)) from None

    @property
    def _labkit_student_type(self):
        """The class name of the student's object (no request: the handle says it)."""
        h = object.__getattribute__(self, "_h")
        return h.type if h.kind == "object" else None

    def __setattr__(self, name, value):
        s, t = self._target()
        tree, blobs = s.encode(value)
        s.request("setattr", target=t, name=name, value=tree, blobs=blobs)

    def __getitem__(self, key):
        s, t = self._target()
        tree, blobs = s.encode(key)
        return s.request("getitem", target=t, key=tree, blobs=blobs)

    def __setitem__(self, key, value):
        s, t = self._target()
        (ktree, kb), (vtree, vb) = s.encode(key), s.encode(value)
        s.request("setitem", target=t, key=ktree, value=_shift(vtree, len(kb)),
                  blobs=kb + vb)

    def __len__(self):
        s, t = self._target()
        n = s.request("len", target=t)
        if not isinstance(n, int) or n < 0:
            raise TypeError("student __len__ returned a non-integer")
        return n

    def __iter__(self):
        s, t = self._target()
        items = s.request("list", target=t)
        return iter(items if isinstance(items, list) else [])

    def __repr__(self):
        h = object.__getattribute__(self, "_h")
        return f"<student {h.kind} {h.type}>"

    def __del__(self):
        try:
            s = object.__getattribute__(self, "_s")
            if object.__getattribute__(self, "_gen") == s.generation and \
                    object.__getattribute__(self, "_path") is None:
                s._release.append(object.__getattribute__(self, "_h").id)
        except Exception:
            pass


class RemoteCallable(Remote):
    __slots__ = ()

    def __call__(self, *args, **kwargs):
        s, t = self._target()
        return s.request("call", target=t, **_call_fields(s, args, kwargs))


class RemoteClass(RemoteCallable):
    __slots__ = ()


class RemoteMethod(RemoteCallable):
    """``obj.name`` where ``name`` is a method of the student object's class, as Python
    binds it: the value ``getattr(obj, name)`` had when it was read. Called at once
    (``layer.forward(x)``: no other request in between) it takes one request, the worker
    reading the attribute then; kept for later (``original = layer.set_target``), it is
    read from the worker before the grader's next request, so what that request changes
    (an attribute set over it) does not change it."""
    __slots__ = ("_owner", "_name", "_value", "_error")

    @staticmethod
    def _bind(owner, name):
        import weakref
        r = object.__new__(RemoteMethod)
        s = object.__getattribute__(owner, "_s")
        for k, v in (("_s", s), ("_gen", -1), ("_h", None), ("_path", None),
                     ("_owner", owner), ("_name", name), ("_value", None), ("_error", None)):
            object.__setattr__(r, k, v)
        s._pending.append(weakref.ref(r))
        return r

    def _resolve(self):
        """Read the attribute now (before the request that could change it)."""
        owner = object.__getattribute__(self, "_owner")
        try:
            s, t = owner._target()
            value = s.request("getattr", target=t, name=object.__getattribute__(self, "_name"))
        except Exception as exc:            # raised where the method is used, as Python would
            object.__setattr__(self, "_error", exc)       # have at the attribute's read
        else:
            object.__setattr__(self, "_value", value)

    def _resolved(self):
        if object.__getattribute__(self, "_value") is None and \
                object.__getattribute__(self, "_error") is None:
            self._resolve()
        err = object.__getattribute__(self, "_error")
        if err is not None:
            raise err
        return object.__getattribute__(self, "_value")

    def _handle_for(self, session):
        value = self._resolved()
        if not isinstance(value, Remote):
            raise TypeError(f"{object.__getattribute__(self, '_name')} is not a student method")
        return value._handle_for(session)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(self._resolved(), name)

    def __call__(self, *args, **kwargs):
        if object.__getattribute__(self, "_value") is not None or \
                object.__getattribute__(self, "_error") is not None:
            return self._resolved()(*args, **kwargs)
        owner = object.__getattribute__(self, "_owner")
        object.__getattribute__(owner, "_s").read_pending(self)
        s, t = owner._target()
        try:
            out, fn = s.request("call", target=t, name=object.__getattribute__(self, "_name"),
                                _calling=self, **_call_fields(s, args, kwargs))
        except BaseException:
            import weakref
            s._pending.append(weakref.ref(self))    # read it before the next request
            raise
        object.__setattr__(self, "_value", fn)      # the method that ran: kept as bound
        return out

    @property
    def _labkit_student_type(self):
        return None

    def __repr__(self):        # (no __del__ of its own: _gen -1 releases nothing; the
        #                            method read, _value, releases its handle itself)
        owner_h = object.__getattribute__(object.__getattribute__(self, "_owner"), "_h")
        return f"<student method {owner_h.type}.{object.__getattribute__(self, '_name')}>"


def _pipe_size(fd, size):
    try:
        import fcntl
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (OSError, ImportError):
        pass


def _call_fields(session, args, kwargs):
    """The request fields of a call with ``args`` and ``kwargs`` (one frame, their blobs
    numbered in order)."""
    (atree, ab), (ktree, kb) = session.encode(list(args)), session.encode(dict(kwargs))
    return {"args": atree, "kwargs": _shift(ktree, len(ab)), "blobs": ab + kb}


def _shift(tree, offset):
    """Renumber the blob indexes of an encoded tree (two trees share one frame)."""
    if not offset:
        return tree
    if isinstance(tree, dict):
        if tree.get("$") == "nd":
            return dict(tree, i=tree["i"] + offset)
        return {k: _shift(v, offset) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_shift(v, offset) for v in tree]
    return tree


def _module_handle(session, name):
    """The encoded handle of the worker's module ``name`` (cached per worker)."""
    with session.lock:
        session.read_pending()
        mod = session.modules.get(name)
        if mod is None or object.__getattribute__(mod, "_gen") != session.generation:
            mod = session.request("import", module=name)
            object.__setattr__(mod, "_path", ("", name))       # never released
            session.modules[name] = mod
        return wire.encode(object.__getattribute__(mod, "_h"))[0]


class WorkerModule(types.ModuleType):
    """``stu_upload.<name>`` in the grader: a module whose attributes live in the worker."""

    def __init__(self, session, name):
        full = PACKAGE if name == PACKAGE else f"{PACKAGE}.{name}"
        super().__init__(full)
        self.__dict__["_session"] = session
        self.__dict__["_short"] = name
        self.__dict__["__file__"] = f"<sandboxed {full}>"

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        s, short = self.__dict__["_session"], self.__dict__["_short"]
        if short == PACKAGE:            # stu_upload.layer_1 as an attribute: the submodule
            import importlib
            try:
                return importlib.import_module(f"{PACKAGE}.{attr}")
            except ImportError:
                pass
        target = _module_handle(s, short)
        try:
            value = s.request("getattr", target=target, name=attr)
        except AttributeError as exc:
            raise AttributeError(str(exc)) from None
        if isinstance(value, Remote):
            object.__setattr__(value, "_path", (short, attr))
        return value

    def __setattr__(self, attr, value):
        """A module global set in the worker (a test handing student code a grader object:
        ``module.pycnml = to_student(...)``); dunder names, and the submodules the import
        system binds to the package (``stu_upload.layer_1``), stay on this stand-in."""
        if attr.startswith("__") and attr.endswith("__") or isinstance(value, types.ModuleType):
            return super().__setattr__(attr, value)
        s, short = self.__dict__["_session"], self.__dict__["_short"]
        tree, blobs = s.encode(value)
        s.request("setattr", target=_module_handle(s, short), name=attr, value=tree,
                  blobs=blobs)


class _Finder:
    """Meta-path finder: ``import stu_upload.x`` in the grader makes a WorkerModule (the
    worker imports the real one: errors such as SyntaxError surface here as ImportError)."""

    def __init__(self, session):
        self.session = session

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(PACKAGE + "."):
            return None
        import importlib.machinery
        return importlib.machinery.ModuleSpec(fullname, self, is_package=False)

    def create_module(self, spec):
        short = spec.name[len(PACKAGE) + 1:]
        try:
            self.session.request("import", module=short)
        except StudentError as exc:
            raise ImportError(f"{spec.name}: {getattr(exc, 'student_type', '')}: {exc}"
                              .replace(": : ", ": ")) from None
        except Exception as exc:        # SyntaxError etc. re-raised as builtins
            raise ImportError(f"{spec.name}: {type(exc).__name__}: {exc}") from None
        return WorkerModule(self.session, short)

    def exec_module(self, module):
        pass


def install_proxy_package(session):
    """Make ``stu_upload`` in this process the submission's package in the worker: every
    ``import stu_upload...`` / ``from stu_upload... import`` gives proxies."""
    import sys
    for name in list(sys.modules):
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            del sys.modules[name]
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
    sys.meta_path.insert(0, _Finder(session))
    pkg = WorkerModule(session, PACKAGE)
    pkg.__path__ = []
    sys.modules[PACKAGE] = pkg
    return pkg


