"""The sandboxed worker: holds one submission's objects and answers the grader's requests.

Runs in a scratch folder that holds only ``code/`` (a copy of the submission's ``stu_upload``,
the runtime the student kit ships, this file and ``wire.py``) and ``work/`` (its writable
working folder, HOME and TMPDIR). Requests arrive on the file descriptor in ``LABKIT_WORKER_IN``,
answers leave on ``LABKIT_WORKER_OUT``; the student's prints go to a capped log file. Nothing
here is trusted by the grader: it decodes answers as plain data and decides everything itself.

Requests (``op``): import (module), getattr (target, name), setattr (target, name, value),
call (target[, name: call that method of it, answer [result, the method]], args, kwargs),
getitem/setitem (target, key[, value]), len, list (target), seed (NumPy's global generator:
``np.random.seed(seed)``), ping; any request may carry ``release``: the ids of handles the
grader dropped. Answers:
``{"ok": value}`` or ``{"err": {type, module, bases, msg}}``. While a call runs, student code
may call a grader object the grader handed it (``GraderStub``): the worker sends
``{"cb": {id, name}, "args": ...}`` and waits for ``{"cbok": value}`` or ``{"cberr": text}``,
serving the requests that arrive meanwhile.
"""
import builtins
import importlib
import importlib.util
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
CODE = os.path.dirname(HERE)
sys.path[:0] = [HERE, CODE]

import wire  # noqa: E402

PACKAGE = "stu_upload"
MSG_CAP = 2000            # an exception's message (all its lines: tests match on them)
OUT_CAP = 64 * 1024         # the student's prints returned with one answer


class GraderCallError(RuntimeError):
    """A grader object handed to student code raised (or refused the call)."""


class GraderStub:
    """A grader object handed to student code (a test's layer, a function): calling it or
    one of its methods asks the grader, which runs it and answers (``callback``)."""
    __slots__ = ("_gid",)

    def __init__(self, gid):
        object.__setattr__(self, "_gid", gid)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        gid = object.__getattribute__(self, "_gid")

        def method(*args, **kwargs):
            return callback(gid, name, args, kwargs)
        method.__name__ = name
        return method

    def __call__(self, *args, **kwargs):
        return callback(object.__getattribute__(self, "_gid"), None, args, kwargs)

    def __repr__(self):
        return f"<grader object {object.__getattribute__(self, '_gid')}>"


_METHODS = {}


def methods_of(cls):
    """The names of the methods ``cls`` and its bases define (functions, static and class
    methods; no dunder names), cached per class."""
    names = _METHODS.get(cls)
    if names is None:
        import types
        names = []
        try:
            for klass in cls.__mro__[:-1]:
                for name, v in vars(klass).items():
                    if isinstance(name, str) and 0 < len(name) <= 100 and \
                            not (name.startswith("__") and name.endswith("__")) and \
                            isinstance(v, (types.FunctionType, staticmethod, classmethod)) \
                            and name not in names:
                        names.append(name)
        except Exception:
            names = []
        names = _METHODS[cls] = tuple(names[:wire.MAX_METHODS])
    return names


class Objects:
    def __init__(self):
        self.by_id, self.next_id = {}, 1

    def handle(self, obj):
        if type(obj) is GraderStub:
            return wire.GraderRef(object.__getattribute__(obj, "_gid"))
        oid = self.next_id
        self.next_id += 1
        self.by_id[oid] = obj
        if isinstance(obj, type) and issubclass(obj, BaseException):
            base = next((c.__name__ for c in obj.__mro__ if c.__module__ == "builtins"),
                        "Exception")
            return wire.Handle(oid, "exception",
                               f"{obj.__module__}:{obj.__name__}:{base}"[:100])
        if isinstance(obj, type):
            kind = "class"
        elif type(obj).__name__ == "module":
            kind = "module"
        elif callable(obj):
            kind = "callable"
        else:
            kind = "object"
        name = obj.__name__ if kind in ("class", "module") else type(obj).__name__
        methods = methods_of(type(obj)) if kind == "object" else ()
        return wire.Handle(oid, kind, str(name), methods)

    def resolve(self, h):
        if h.id not in self.by_id:
            raise LookupError(f"object {h.id} was released")
        return self.by_id[h.id]


def exception_info(exc):
    bases = [c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins"]
    text = ""
    try:
        text = str(exc)
    except BaseException:
        pass
    line = text.strip()
    return {"type": type(exc).__name__[:100], "module": str(type(exc).__module__)[:100],
            "bases": bases[:20], "msg": line[:MSG_CAP]}


CHANNEL = {}


def _dec(tree, blobs):
    return wire.decode(tree, blobs, on_handle=CHANNEL["objs"].resolve, on_grader=GraderStub)


def callback(gid, name, args, kwargs):
    """Ask the grader to run its object ``gid`` (method ``name``, None: call it); requests
    that arrive meanwhile (the grader's object may use student objects) are served."""
    objs, fin, fout = CHANNEL["objs"], CHANNEL["fin"], CHANNEL["fout"]
    tree, blobs = wire.encode({"args": list(args), "kwargs": dict(kwargs)},
                              handle_of=objs.handle)
    send(fout, wire.pack_parts({"cb": {"id": gid, "name": name}, "args": tree}, blobs))
    while True:
        header, in_blobs = wire.read_frame(fin)
        if "cbok" in header:
            return _dec(header["cbok"], in_blobs)
        if "cberr" in header:
            raise GraderCallError(str(header["cberr"])[:300])
        if "cbint" in header:           # the grader's callback was interrupted (Ctrl-C, a
            raise KeyboardInterrupt     # test's hook): so is the student's code that called
        send(fout, answer(header, in_blobs))


class _Tee:
    """The student's prints during one request: kept (capped) for the grader, which prints
    them where the test can read them (capsys), and written to the log as before."""

    def __init__(self, stream):
        self.stream, self.parts, self.size = stream, [], 0

    def write(self, text):
        text = str(text)
        if self.size < OUT_CAP:
            self.parts.append(text[:OUT_CAP - self.size])
            self.size += len(self.parts[-1])
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def answer(header, blobs):
    """The answer frame to one request, as parts (wire.pack_parts; with the student's prints
    during it: ``out``)."""
    saved = sys.stdout
    tee = sys.stdout = _Tee(saved)
    try:
        frame_header, out_blobs = _answer(header, blobs)
    finally:
        sys.stdout = saved
    if tee.parts:
        frame_header["out"] = "".join(tee.parts)
    return wire.pack_parts(frame_header, out_blobs)


def send(fout, parts):
    for part in parts:
        fout.write(part)
    fout.flush()


def _answer(header, blobs):
    objs = CHANNEL["objs"]
    op = header.get("op")
    for oid in header.get("release", ()):      # handles the grader dropped since
        objs.by_id.pop(oid, None)
    try:
        if op == "ping":
            result = "pong"
        elif op == "seed":          # tests that seed NumPy's global generator
            import numpy
            numpy.random.seed(int(header["seed"]))
            result = None
        elif op == "import":
            name = str(header["module"])
            full = PACKAGE if name == PACKAGE else PACKAGE + "." + name
            result = importlib.import_module(full)
        else:
            target = _dec(header.get("target"), blobs)
            if op == "getattr":
                result = getattr(target, str(header["name"]))
            elif op == "setattr":
                setattr(target, str(header["name"]), _dec(header["value"], blobs))
                result = None
            elif op == "call":
                named = "name" in header        # obj.name(...) in one request
                fn = getattr(target, str(header["name"])) if named else target
                args = _dec(header.get("args", {"$": "list", "v": []}), blobs)
                kwargs = _dec(header.get("kwargs", {"$": "dict", "items": []}), blobs)
                result = fn(*args, **kwargs)
                if named:
                    result = [result, fn]
            elif op == "getitem":
                result = target[_dec(header["key"], blobs)]
            elif op == "setitem":
                target[_dec(header["key"], blobs)] = _dec(header["value"], blobs)
                result = None
            elif op == "len":
                result = len(target)
            elif op == "list":
                result = list(target)
            else:
                raise ValueError(f"unknown request {op!r}")
        tree, out_blobs = wire.encode(result, handle_of=objs.handle)
        return {"ok": tree}, out_blobs
    except BaseException as exc:        # SystemExit, KeyboardInterrupt: reported too
        if os.environ.get("LABKIT_WORKER_DEBUG"):
            traceback.print_exc()
        return {"err": exception_info(exc)}, []


def serve(fin, fout):
    CHANNEL.update(objs=Objects(), fin=fin, fout=fout)
    while True:
        try:
            header, blobs = wire.read_frame(fin)
        except EOFError:
            return
        send(fout, answer(header, blobs))


def main():
    fin = os.fdopen(int(os.environ["LABKIT_WORKER_IN"]), "rb", buffering=0)
    fout = os.fdopen(int(os.environ["LABKIT_WORKER_OUT"]), "wb")
    for key in ("LABKIT_WORKER_IN", "LABKIT_WORKER_OUT"):
        os.environ.pop(key, None)
    os.chdir(os.environ.get("HOME", "."))
    try:        # the original lab's np.float, scipy.misc.imread ... (off: LABKIT_LEGACY=0)
        from labkit.runtime import legacy
        legacy.install()
    except Exception as exc:
        builtins.print(f"worker: legacy shim not installed ({exc})", file=sys.stderr)
    if os.environ.pop("LABKIT_WORKER_NOINIT", None):    # __init__.py failed: skip it
        import importlib.machinery
        spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [os.path.join(CODE, PACKAGE)]
        sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
    serve(fin, fout)
    builtins.print("worker: grader closed the pipe", file=sys.stderr)


if __name__ == "__main__":
    main()
