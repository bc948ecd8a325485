"""Drivers that the tests start (``python main_exp_3_x.py ...``), run inside the sandbox: a
``subprocess.Popen`` replacement installed by the grading plugin for a sandboxed run."""
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess

from labkit.staff.points import ROOT


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


def _driver_folders(cwd, args, tmp):
    """The test folders a driver started in ``cwd`` with ``args`` may write in: ``cwd`` and,
    for each argument (or ``--flag=value``'s value) that names a path under ``tmp``, that
    folder, or the nearest folder above it that exists (no link followed: a path through a
    link names no folder of the grader's)."""
    out = [cwd]
    for arg in map(str, args):
        for value in {arg, arg.partition("=")[2]}:
            if not value or "\0" in value:
                continue
            path = os.path.normpath(os.path.join(cwd, value))
            if not path.startswith(tmp + os.sep):
                continue
            while path.startswith(tmp + os.sep):
                try:
                    st = os.lstat(path)
                except OSError:
                    path = os.path.dirname(path)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    out.append(path)
                elif not stat.S_ISLNK(st.st_mode):
                    out.append(os.path.dirname(path))
                break
    return sorted(set(out))


FORK_DRIVERS = os.environ.get("LABKIT_FORK_DRIVERS", "1") != "0"   # 0: a fresh Python each


class DriverServer:
    """The grader's end of the sandbox's driver server (``zygote.py``): one per submission,
    started at the first driver and again after it ended (a killed worker's stragglers)."""

    START_TIMEOUT = 60.0
    HELLO_TIMEOUT = 30.0

    def __init__(self, sandbox):
        self.sandbox, self.proc, self.sock = sandbox, None, None

    def _start(self):
        from labkit.staff.sandbox.process import WORKER_DIR
        self.close()
        sb = self.sandbox
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = sb.python() + [os.path.join(sb.scratch.code, WORKER_DIR, "zygote.py")]
            self.proc = sb.popen(argv, cwd=sb.scratch.work, rw=[sb.scratch.tmp],
                                 env={"LABKIT_ZYGOTE_FD": str(theirs.fileno())},
                                 pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.sock = mine
        ready, _, _ = select.select([mine], [], [], self.START_TIMEOUT)
        if not ready or mine.recv(16) != b"ready":
            self.close()
            raise OSError("the sandbox's driver server did not start")

    def spawn(self, argv, cwd, env, fds):
        """Start ``argv`` (the driver's path, its arguments) in ``cwd`` with ``env`` and
        ``fds`` as its stdin, stdout and stderr: (its process id, its status socket)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            msg = json.dumps({"argv": [str(a) for a in argv], "cwd": cwd, "env": env})
            try:
                socket.send_fds(self.sock, [msg.encode("utf-8")], [*fds, theirs.fileno()])
            except OSError:
                self.close()            # ended meanwhile: once more, with a fresh one
                self._start()
                socket.send_fds(self.sock, [msg.encode("utf-8")], [*fds, theirs.fileno()])
        finally:
            theirs.close()
        try:
            ready, _, _ = select.select([mine], [], [], self.HELLO_TIMEOUT)
            if not ready:
                raise OSError("the sandbox's driver server did not start the driver")
            data, anc, _, _ = mine.recvmsg(256, socket.CMSG_SPACE(12))
            if data[:1] == b"E":
                raise OSError(f"the driver could not start: {data[1:].decode(errors='replace')}")
            pid = None
            for level, kind, payload in anc:        # the kernel's word, not the sender's
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            if data != b"S" or not pid:
                raise OSError("the sandbox's driver server sent a malformed answer")
        except BaseException:
            mine.close()
            raise
        return pid, mine

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            from labkit.staff.sandbox.process import kill_group
            kill_group(self.proc)
            self.proc = None


def _sandbox_drivers(session):
    """Run the drivers that tests start (``python main_exp_3_x.py ...``) in the sandbox:
    the scratch copy of the driver and the submission, its limits and scrubbed environment;
    they may write in the tests' temporary folder only."""
    from labkit.staff.sandbox.process import DRIVERS
    sandbox = session.sandbox
    from labkit.runtime.student import use_folder_hook

    def folder_hook(folder, give):
        if give:
            sandbox.scratch.give_folder(folder)
        else:
            sandbox.scratch.take_back([folder])
    use_folder_hook(folder_hook)      # student_folder(): the only folders it may write in
    drivers = {os.path.realpath(os.path.join(ROOT, n)): n for n in DRIVERS}
    server = session.driver_server = DriverServer(sandbox) if FORK_DRIVERS else None
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
                cwd = os.path.abspath(str(kw.get("cwd") or os.getcwd()))
                if not (cwd == tmp or cwd.startswith(tmp + os.sep)):
                    cwd = sandbox.scratch.work
                # the driver may write in its working folder and where its arguments point
                # (the folder, or the nearest one that exists), for as long as it runs
                self._labkit_leased = sandbox.scratch.lease(
                    _driver_folders(cwd, argv[2:], tmp))
                script = [os.path.join(sandbox.scratch.code, name), *map(str, argv[2:])]
                kw.update(sandbox.start_kwargs(cwd))
                if server is not None:      # a fork of the sandbox's driver server
                    self._labkit_fork = (script, cwd, kw["env"])
                else:
                    args = sandbox.command(sandbox.python() + script, cwd, rw=[tmp])
                self._labkit_uid = sandbox.uid
            try:
                super().__init__(args, *a, **kw)
            except BaseException:
                self._labkit_end()
                raise

        def _labkit_end(self):
            """The driver has ended: its folders are the grader's again (the uid's links
            in them removed) before the test reads what it left."""
            leased = getattr(self, "_labkit_leased", None)
            if leased:
                self._labkit_leased = None
                sandbox.scratch.take_back(leased)

        def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env,
                           startupinfo, creationflags, shell, p2cread, p2cwrite, c2pread,
                           c2pwrite, errread, errwrite, *rest):
            fork = getattr(self, "_labkit_fork", None)
            if fork is None:
                return super()._execute_child(
                    args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                    creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread,
                    errwrite, *rest)
            script, cwd, env = fork
            fds = [fd if fd != -1 else i for i, fd in enumerate((p2cread, c2pwrite, errwrite))]
            try:
                self.pid, self._labkit_status = server.spawn(script, cwd, env, fds)
                self._child_created = True
            finally:
                self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

        def _labkit_read_status(self):
            """The wait status the driver server wrote when the driver ended (its end of
            the socket closed without one: the server was killed, and so the driver)."""
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

        def _wait(self, *a, **kw):
            try:
                if getattr(self, "_labkit_fork", None) is None:
                    return super()._wait(*a, **kw)
                timeout = kw.get("timeout", a[0] if a else None)
                if self.returncode is None:
                    ready, _, _ = select.select([self._labkit_status], [], [], timeout)
                    if not ready:
                        raise subprocess.TimeoutExpired(self.args, timeout)
                    self._labkit_read_status()
                return self.returncode
            finally:
                if self.returncode is not None:
                    self._labkit_end()

        def _internal_poll(self, *a, **kw):
            try:
                if getattr(self, "_labkit_fork", None) is None:
                    return super()._internal_poll(*a, **kw)
                if self.returncode is None and self._labkit_status is not None:
                    ready, _, _ = select.select([self._labkit_status], [], [], 0)
                    if ready:
                        self._labkit_read_status()
                return self.returncode
            finally:
                if self.returncode is not None:
                    self._labkit_end()

        def send_signal(self, sig):
            """A signal for the driver reaches the driver (not bubblewrap, which would die
            of it): every process of this sandbox's uid started under this one (a fork of
            the driver server: that process, when it is still the sandbox uid's)."""
            uid = getattr(self, "_labkit_uid", None)
            if getattr(self, "_labkit_fork", None) is not None:
                if self.poll() is None and (uid is None or _uid_of(self.pid) == uid):
                    try:
                        os.kill(self.pid, sig)
                    except ProcessLookupError:
                        pass
                return
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

