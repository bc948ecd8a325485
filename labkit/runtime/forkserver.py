"""Drivers (``python main_exp_3_x.py ...``) started by tests as forks of one Python that has
imported NumPy, SciPy and Pillow already: a driver then costs its own work, not half a
second of start-up (a hundred drivers in the kit's suite; as many in a sandboxed grade,
where the staff tools start this server inside the sandbox).

``install(drivers)`` makes ``subprocess.Popen([sys.executable, driver, ...])`` use it (the
kit's tests/conftest.py; ``LABKIT_FORK_DRIVERS=0``: a fresh Python each time, as before).
A driver's environment's start-up variables (``PYTHON*``, thread counts) pick the server:
one per set, started with them. Any other command, or another system than Linux:
``subprocess.Popen`` as usual.

The server (this file run as a script) never imports student code. Requests arrive on the
socket in ``LABKIT_FORK_FD``: JSON ``{"argv": [driver, args...], "cwd": ..., "env": {...},
"setsid": bool}`` with four file descriptors (the driver's stdin, stdout, stderr, and its
status socket). The fork becomes the driver as ``python driver args`` would: those
descriptors as 0, 1 and 2, the folder, environment, ``sys.argv`` and ``sys.path``, the
script run as ``__main__``, the exit code Python would give. It says ``S`` on its status
socket as it starts (the kernel attaches its process id: SCM_CREDENTIALS); the server
writes ``X`` and the wait status there when it ends. Nothing from the server is trusted
beyond the process id the kernel gives.
"""
import json
import os
import re
import select
import signal
import socket
import struct
import sys

PRELOAD = ("numpy", "scipy", "scipy.io", "scipy.ndimage", "PIL.Image")


def preload():
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def _script_frames(tb, path):
    """The traceback from the driver's own frame on (as Python prints a script's)."""
    start = tb
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == path:
            return tb
        tb = tb.tb_next
    return start


def run_driver(path):
    """Run ``path`` as ``__main__``; the exit code Python would give."""
    import runpy
    import traceback
    try:
        runpy.run_path(path, run_name="__main__")
        return 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xFF
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        traceback.print_exception(type(exc), exc, _script_frames(exc.__traceback__, path))
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, _script_frames(exc.__traceback__, path))
        return 1


def child(req, fds, closing):
    """In the fork: become the driver; never returns."""
    if not (isinstance(req, dict) and isinstance(fds, list) and len(fds) == 4 and
            isinstance(closing, list)):
        raise TypeError("child(request dict, [4 descriptors], [socket, fd, fd])")
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        closing[0].close()                  # the server's socket and wake-up pipe
        for fd in closing[1:]:
            os.close(fd)
        if req.get("setsid", True):
            os.setsid()
        for i, fd in enumerate(fds[:3]):
            if fd != i:
                os.dup2(fd, i)
        for fd in set(fds[:3]):
            if fd > 2:
                os.close(fd)
        os.write(fds[3], b"S")              # hello: the kernel adds this process's id
        os.close(fds[3])
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        path = os.path.abspath(req["argv"][0])
        sys.argv = [path] + list(req["argv"][1:])
        sys.path.insert(0, os.path.dirname(path))     # (the server took its own off)
        code = run_driver(path)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            import threading
            threading._shutdown()
        except BaseException:
            pass
        try:
            import atexit
            atexit._run_exitfuncs()
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def _reap(children):
    """Wait for the drivers that ended: each one's wait status to its status socket."""
    if not isinstance(children, dict):
        raise TypeError("_reap({pid: status socket})")
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = children.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, b"X" + struct.pack("<i", status))
            except OSError:
                pass
            os.close(fd)


def _start_driver(msg, fds, children, closing):
    """Fork the driver a request asks for (four descriptors came with it)."""
    if not (isinstance(msg, bytes) and isinstance(fds, list) and len(fds) == 4 and
            isinstance(children, dict) and isinstance(closing, list)):
        raise TypeError("_start_driver(request bytes, [4 descriptors], {pid: fd}, [...])")
    try:
        req = json.loads(msg.decode("utf-8"))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
    except Exception as exc:            # (a fork refused at the process limit)
        try:
            os.write(fds[3], b"E" + str(exc)[:200].encode("utf-8", "replace"))
        except OSError:
            pass
        for fd in fds:
            os.close(fd)
        return
    if pid == 0:                # (other drivers' status sockets: not this one's to write)
        child(req, fds, [*closing, *children.values()])
    for fd in fds[:3]:
        os.close(fd)
    children[pid] = fds[3]


def serve():
    ctl = socket.socket(fileno=int(os.environ.pop("LABKIT_FORK_FD")))
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # a terminal's Ctrl-C: not for it
    preload()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    children = {}                           # pid -> its status socket's descriptor
    ctl.send(b"ready")
    while True:
        try:
            ready, _, _ = select.select([ctl, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        _reap(children)
        if ctl not in ready:
            continue
        msg, fds, _, _ = socket.recv_fds(ctl, 1 << 20, 4)
        if not msg:
            return                          # the grader closed its end
        if len(fds) == 4:
            _start_driver(msg, fds, children, [ctl, wake_r, wake_w])
        else:
            for fd in fds:
                os.close(fd)


# ------------------------------------------------------------------------------- client
ENABLED = sys.platform.startswith("linux") and os.environ.get("LABKIT_FORK_DRIVERS", "1") != "0"
# what a server read when it started: a driver asking for other values gets another server
_STARTUP_ENV = re.compile(r"PYTHON|OMP_|OPENBLAS_|MKL_|LD_|LABKIT_THREADS$|MPLBACKEND$")


class ForkServer:
    """The starting side's end of a fork server. ``start(fd)`` starts its process with the
    socket ``fd`` passed and named in ``LABKIT_FORK_FD`` (default: this Python, this
    environment, unsandboxed; the staff sandbox starts it in the sandbox)."""

    START_TIMEOUT = 60.0
    HELLO_TIMEOUT = 30.0

    def __init__(self, start=None, env=None):
        self._starter = start or self._start_here
        self.env = dict(os.environ if env is None else env)     # what it starts with
        self.proc, self.sock = None, None

    def _start_here(self, fd):
        import subprocess
        return subprocess.Popen([sys.executable, os.path.abspath(__file__)],
                                env={**self.env, "LABKIT_FORK_FD": str(fd)}, pass_fds=(fd,),
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def _start(self):
        self.close()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = self._starter(theirs.fileno())
        finally:
            theirs.close()
        self.sock = mine
        ready, _, _ = select.select([mine], [], [], self.START_TIMEOUT)
        if not ready or mine.recv(16) != b"ready":
            self.close()
            raise OSError("the fork server did not start")

    def spawn(self, argv, cwd, env, fds, setsid=True):
        """Start ``argv`` (the driver's path, its arguments) in ``cwd`` with ``env`` and
        ``fds`` as its stdin, stdout and stderr: (its process id, its status socket)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        msg = json.dumps({"argv": [str(a) for a in argv], "cwd": cwd, "env": env,
                          "setsid": bool(setsid)}).encode("utf-8")
        try:
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            try:
                socket.send_fds(self.sock, [msg], [*fds, theirs.fileno()])
            except OSError:
                self._start()           # it ended meanwhile: once more, with a fresh one
                socket.send_fds(self.sock, [msg], [*fds, theirs.fileno()])
        finally:
            theirs.close()
        try:
            ready, _, _ = select.select([mine], [], [], self.HELLO_TIMEOUT)
            if not ready:
                raise OSError("the fork server did not start the driver")
            data, anc, _, _ = mine.recvmsg(256, socket.CMSG_SPACE(12))
            if data[:1] == b"E":
                raise OSError(f"the driver could not start: {data[1:].decode(errors='replace')}")
            pid = None
            for level, kind, payload in anc:        # the kernel's word, not the sender's
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            if data != b"S" or not pid:
                raise OSError("the fork server sent a malformed answer")
        except BaseException:
            mine.close()
            raise
        return pid, mine

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except Exception:
                pass
            self.proc = None


class ForkedPopenMixin:
    """``subprocess.Popen`` methods for a child that a ForkServer started: set
    ``self._labkit_fork = (server, argv, cwd, env, setsid)`` before ``Popen.__init__``."""

    _labkit_fork = None
    _labkit_status = None
    _labkit_fallback = False    # the server failing: a fresh Python (True) or the error

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env,
                       startupinfo, creationflags, shell, p2cread, p2cwrite, c2pread,
                       c2pwrite, errread, errwrite, *rest):
        if self._labkit_fork is None:
            return super()._execute_child(
                args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread,
                errwrite, *rest)
        server, argv, fork_cwd, fork_env, setsid = self._labkit_fork
        fds = [fd if fd != -1 else i for i, fd in enumerate((p2cread, c2pwrite, errwrite))]
        try:
            self.pid, self._labkit_status = server.spawn(argv, fork_cwd, fork_env, fds, setsid)
        except OSError:
            if not self._labkit_fallback:
                self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)
                raise
            self._labkit_fork = None        # (a system where the server cannot work)
            return super()._execute_child(
                args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread,
                errwrite, *rest)
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _labkit_read_status(self):
        """The wait status the server wrote when the driver ended (the socket closed
        without one: the server was killed, and so the driver)."""
        sock, self._labkit_status = self._labkit_status, None
        try:
            data = sock.recv(16)
        except OSError:
            data = b""
        sock.close()
        if data[:1] == b"X" and len(data) == 5:
            self.returncode = os.waitstatus_to_exitcode(struct.unpack("<i", data[1:])[0])
        else:
            self.returncode = -signal.SIGKILL

    def _wait(self, timeout):
        if self._labkit_fork is None:
            return super()._wait(timeout)
        if self.returncode is None:
            ready, _, _ = select.select([self._labkit_status], [], [], timeout)
            if not ready:
                import subprocess
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._labkit_read_status()
        return self.returncode

    def _internal_poll(self, *a, **kw):
        if self._labkit_fork is None:
            return super()._internal_poll(*a, **kw)
        if self.returncode is None and self._labkit_status is not None:
            ready, _, _ = select.select([self._labkit_status], [], [], 0)
            if ready:
                self._labkit_read_status()
        return self.returncode

    def send_signal(self, sig):
        if self._labkit_fork is None:
            return super().send_signal(sig)
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def plain_popen():
    """``subprocess.Popen`` without the Popen classes installed over it (this module's, the
    grader's sandboxed one)."""
    import subprocess
    popen = subprocess.Popen
    while getattr(popen, "_labkit_forks", False) or getattr(popen, "_labkit_sandboxed", False):
        popen = popen._labkit_base
    return popen


def startup_key(env):
    """The variables of ``env`` that Python, NumPy and the thread pools read at start-up
    (PYTHONPATH, ...): a driver is forked from a server started with the same; None when
    ``env`` is not plain text."""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        return None
    return tuple(sorted((k, v) for k, v in env.items() if _STARTUP_ENV.match(k)))


def install(drivers):
    """``subprocess.Popen([sys.executable, d, ...])`` for a path ``d`` in ``drivers``: a
    fork of a fork server started (at the first such driver) with the same start-up
    variables, so the fork is what a fresh Python would have been (PYTHONPATH at a kit's
    root runs its sitecustomize in that server). Nothing when not ENABLED. Returns
    {start-up variables: ForkServer}, filled as drivers start; None when not enabled."""
    import atexit
    import subprocess
    if not ENABLED or getattr(subprocess.Popen, "_labkit_forks", False) or \
            getattr(subprocess.Popen, "_labkit_sandboxed", False):   # (graded: the sandbox's)
        return None
    paths = {os.path.realpath(d) for d in drivers}
    servers = {}

    @atexit.register
    def close_all():
        for server in servers.values():
            server.close()
    base = subprocess.Popen

    class ForkedPopen(ForkedPopenMixin, base):
        _labkit_forks = True
        _labkit_base = base
        _labkit_fallback = True     # the kit: a driver runs either way

        def __init__(self, args, *a, **kw):
            argv = list(args) if isinstance(args, (list, tuple)) else None
            if self._labkit_fork is None and not a and argv and len(argv) >= 2 and \
                    str(argv[0]) == sys.executable and kw.get("executable") is None and \
                    not kw.get("shell") and kw.get("preexec_fn") is None and \
                    not kw.get("pass_fds"):
                cwd = os.path.abspath(str(kw.get("cwd") or os.getcwd()))
                path = os.path.join(cwd, str(argv[1]))
                env = dict(os.environ if kw.get("env") is None else kw["env"])
                key = startup_key(env)
                if os.path.realpath(path) in paths and key is not None:
                    if key not in servers:
                        servers[key] = ForkServer(env=env)
                    self._labkit_fork = (servers[key], [path, *map(str, argv[2:])], cwd, env,
                                         bool(kw.get("start_new_session")))
            super().__init__(args, *a, **kw)

    subprocess.Popen = ForkedPopen
    return servers

if __name__ == "__main__":
    sys.path.pop(0)             # this folder: no module here may shadow another
    serve()
