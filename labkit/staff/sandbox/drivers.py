"""Drivers that the tests start (``python main_exp_3_x.py ...``), run inside the sandbox: a
``subprocess.Popen`` replacement installed by the grading plugin for a sandboxed run."""
import os
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
                sandbox.scratch.give(tmp)       # fds, no link followed; tmp stays root's
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

