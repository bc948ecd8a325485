"""Drivers that the tests start (``python main_exp_3_x.py ...``), run inside the sandbox: a
``subprocess.Popen`` replacement installed by the grading plugin for a sandboxed run."""
import os
import stat
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


def _driver_server(sandbox):
    """A fork server (labkit/runtime/forkserver.py) inside the sandbox: the scratch copy of
    the server, the sandbox's uid, limits, mounts (the tests' folder writable, as for any
    driver) and environment."""
    from labkit.runtime.forkserver import ForkServer

    def start(fd):
        script = os.path.join(sandbox.scratch.code, "labkit", "runtime", "forkserver.py")
        return sandbox.popen(sandbox.python() + [script], cwd=sandbox.scratch.work,
                             rw=[sandbox.scratch.tmp], env={"LABKIT_FORK_FD": str(fd)},
                             pass_fds=(fd,))
    return ForkServer(start)


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
    from labkit.runtime.forkserver import ENABLED, ForkedPopenMixin, plain_popen
    server = session.driver_server = _driver_server(sandbox) if ENABLED else None
    base = plain_popen()            # the real one: not a kit's fork-server Popen (unsandboxed)

    class SandboxedPopen(ForkedPopenMixin, base):
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
                    self._labkit_fork = (server, script, cwd, kw["env"], True)
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

        def _wait(self, *a, **kw):
            try:
                return super()._wait(*a, **kw)
            finally:
                if self.returncode is not None:
                    self._labkit_end()

        def _internal_poll(self, *a, **kw):
            try:
                return super()._internal_poll(*a, **kw)
            finally:
                if self.returncode is not None:
                    self._labkit_end()

        def send_signal(self, sig):
            """A signal for the driver reaches the driver (not bubblewrap, which would die
            of it): every process of this sandbox's uid started under this one (a fork of
            the driver server: that process, when it is still the sandbox uid's)."""
            uid = getattr(self, "_labkit_uid", None)
            if self._labkit_fork is not None:
                if uid is None or _uid_of(self.pid) == uid:
                    super().send_signal(sig)
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

