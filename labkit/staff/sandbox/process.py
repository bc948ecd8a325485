"""Starting and ending sandboxed processes: the scratch folder, the modes, limits, kill.

Modes (``detect_mode``):

``bwrap``  the grader runs as root and bubblewrap works: the process sees a read-only file
           system made of the system folders, the Python installation and its own scratch
           folder (writable: ``work/`` only), no network, a private PID namespace, and runs as
           a fresh unprivileged uid (``setpriv``) with the limits below.
``uid``    root without bubblewrap: a fresh unprivileged uid (cannot write root-owned files, its
           processes are found and killed by uid), the limits; it can still *read*
           world-readable files.
``none``   not root: the limits, its own session and process group, a scrubbed environment;
           no write or read protection beyond the grader user's own file permissions.
"""
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "stu_upload"
GIB = 1024 ** 3
MAX_SUBMISSION_BYTES = 50 * 1024 * 1024
DRIVERS = ("main_exp_3_1.py", "main_exp_3_2.py", "main_exp_3_3.py")
KIT_ROOT_FILES = ("pycnml.py", "sitecustomize.py")     # the kit root's, as the kit ships them
_MODE_CACHE = {}


class SandboxError(Exception):
    """The sandbox could not be set up (a grading error, not the student's fault)."""


# ------------------------------------------------------------------------------- modes
def _bwrap_works():
    bwrap = shutil.which("bwrap")
    if not bwrap or os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    try:
        r = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net",
                            "--die-with-parent", "--new-session", "--proc", "/proc",
                            "true"], capture_output=True, timeout=20)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _uid_works():
    """Whether an unprivileged uid can run this interpreter with NumPy (it cannot when
    Python or the virtualenv sits in a folder only root may read, such as /root)."""
    def drop():
        os.setgroups([])
        os.setgid(PROBE_UID)
        os.setuid(PROBE_UID)
    try:
        r = subprocess.run([sys.executable, "-E", "-s", "-c", "import numpy"], cwd="/",
                           preexec_fn=drop, capture_output=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin"})
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


PROBE_UID = 1_599_999_999
NO_SANDBOX_HELP = ("install bubblewrap ('apt-get install bubblewrap'), or install Python and "
                   "the virtualenv where other users may read them (uid mode), or pass "
                   "--sandbox=none to grade with resource limits only (student code then "
                   "runs with your rights)")


def detect_mode(requested="auto"):
    """The mode that will run: ``requested`` if it works here, else an error; ``auto``: the
    strongest that works."""
    if requested in _MODE_CACHE:
        return _MODE_CACHE[requested]
    root = os.geteuid() == 0
    if requested == "auto":
        mode = "bwrap" if _bwrap_works() else ("uid" if root else "none")
        if mode == "uid" and not _uid_works():
            raise SandboxError("no sandbox works here: bubblewrap is missing or fails, and an "
                               "unprivileged user cannot run this Python; " + NO_SANDBOX_HELP)
    elif requested == "bwrap" and not _bwrap_works():
        raise SandboxError("--sandbox=bwrap: bubblewrap is missing or does not work here (it "
                           "needs root and 'apt-get install bubblewrap')")
    elif requested == "uid" and not root:
        raise SandboxError("--sandbox=uid needs the grader to run as root")
    elif requested == "uid" and not _uid_works():
        raise SandboxError("--sandbox=uid: an unprivileged user cannot run this Python; "
                           + NO_SANDBOX_HELP)
    elif requested in ("bwrap", "uid", "none"):
        mode = requested
    else:
        raise SandboxError(f"unknown sandbox mode {requested!r}")
    _MODE_CACHE[requested] = mode
    return mode


def fresh_uid():
    """An unused uid (no process has it) for one submission's processes."""
    for _ in range(100):
        uid = 1_600_000_000 + random.randrange(100_000_000)
        if not processes_of_uid(uid):
            return uid
    raise SandboxError("no free uid")


def processes_of_uid(uid):
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def processes_with_token(token):
    pids, needle = [], f"LABKIT_SANDBOX_TOKEN={token}".encode()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(name))
            except OSError:
                pass
    return pids


def kill_group(proc):
    """SIGKILL ``proc``'s process group (it was started with ``start_new_session``), then
    wait for ``proc`` (at most 10 s)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def kill_processes(uid, token):
    """SIGKILL every process of ``uid`` (when not None) or else every process whose
    environment holds ``LABKIT_SANDBOX_TOKEN=token``, until none is left (50 rounds at
    most). Returns how many were found."""
    found = 0
    for _ in range(50):
        pids = processes_of_uid(uid) if uid is not None else processes_with_token(token)
        if not pids:
            break
        found += len(pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)
    return found


# ------------------------------------------------------------------------------- scratch
def copy_submission(src, dest, limit=MAX_SUBMISSION_BYTES):
    """Copy regular files of ``src`` into ``dest``: no links (skipped, never followed), no
    special files, no caches; at most ``limit`` bytes. Returns notes."""
    notes, total = [], 0
    src = os.path.abspath(src)
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel = os.path.relpath(dirpath, src)
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                notes.append(f"link {os.path.join(rel, d)} skipped")
            elif d != "__pycache__":
                keep.append(d)
        dirnames[:] = keep
        os.makedirs(os.path.join(dest, rel), exist_ok=True)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                notes.append(f"{os.path.join(rel, name)} is not a regular file; skipped")
                continue
            if name.endswith((".pyc", ".pth")):
                continue
            total += st.st_size
            if total > limit:
                raise SandboxError(f"submission larger than {limit >> 20} MB")
            with open(full, "rb") as fi, open(os.path.join(dest, rel, name), "wb") as fo:
                shutil.copyfileobj(fi, fo)
    return notes


class Scratch:
    """One submission's scratch folder: ``code/`` (read-only for the sandboxed processes:
    the submission's stu_upload, labkit/__init__.py + labkit/runtime, the drivers, the worker)
    and ``work/`` (theirs: cwd, HOME, TMPDIR), ``tmp/`` (the tests' temporary files)."""

    def __init__(self, stu_pkg, base=None, uid=None):
        self.path = os.path.realpath(__import__("tempfile").mkdtemp(prefix="labkit_sbx_",
                                                                    dir=base))
        os.chmod(self.path, 0o711)
        self.code = os.path.join(self.path, "code")
        self.work = os.path.join(self.path, "work")
        self.tmp = os.path.join(self.path, "tmp")
        self.log = os.path.join(self.path, "output.log")
        self.uid = uid
        self.notes = copy_submission(stu_pkg, os.path.join(self.code, PACKAGE))
        shutil.copytree(os.path.join(ROOT, "labkit", "runtime"),
                        os.path.join(self.code, "labkit", "runtime"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(os.path.join(ROOT, "labkit", "__init__.py"),
                    os.path.join(self.code, "labkit", "__init__.py"))
        for name in DRIVERS + KIT_ROOT_FILES:
            if os.path.isfile(os.path.join(ROOT, name)):
                shutil.copy(os.path.join(ROOT, name), os.path.join(self.code, name))
        os.makedirs(os.path.join(self.code, "_sandbox"))
        for name in ("worker.py", "wire.py"):
            shutil.copy(os.path.join(HERE, name), os.path.join(self.code, "_sandbox", name))
        self.output_dir = os.path.join(self.code, "output")    # the drivers' default output
        os.makedirs(self.output_dir, exist_ok=True)              # folder: writable
        for dirpath, dirnames, filenames in os.walk(self.code):
            os.chmod(dirpath, 0o755)
            for n in filenames:
                os.chmod(os.path.join(dirpath, n), 0o644)
        self.share_dir = os.path.join(self.path, "share")
        for d in (self.work, os.path.join(self.work, "tmp"), self.tmp, self.share_dir):
            os.makedirs(d, exist_ok=True)
        self.give(self.work)
        self.give(self.output_dir)
        os.chmod(self.tmp, 0o711)
        os.chmod(self.share_dir, 0o755)
        open(self.log, "ab").close()

    def share(self, path):
        """A read-only copy of the grader's file ``path`` that the sandboxed processes can
        read (a hard link when on the same file system: the file becomes world-readable and
        stays owned by the grader, so they cannot change it); returns its path. For test
        data such as the full-size lab fixture, never for answers."""
        path = os.path.realpath(path)
        if not os.path.isfile(path):
            raise SandboxError(f"cannot share {path}: not a file")
        dest = os.path.join(self.share_dir, __import__("hashlib").sha1(path.encode()).hexdigest()[:12],
                            os.path.basename(path))
        if not os.path.exists(dest):
            os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
            os.chmod(os.path.dirname(dest), 0o755)
            try:
                os.link(path, dest)
            except OSError:
                shutil.copyfile(path, dest)
            os.chmod(dest, 0o444)
        return dest

    def give(self, path):
        """Hand ``path`` (recursively) to the sandbox uid."""
        if self.uid is None:
            return
        for dirpath, dirnames, filenames in os.walk(path):
            os.lchown(dirpath, self.uid, self.uid)
            os.chmod(dirpath, 0o700)
            for n in filenames:
                os.lchown(os.path.join(dirpath, n), self.uid, self.uid)

    def give_new(self, path):
        """``give`` only what is new under ``path`` since the last time: folders whose
        modification time changed (cheap enough to run before every call to student code)."""
        if self.uid is None:
            return
        seen = self.__dict__.setdefault("_given", {})
        stack = [path]
        while stack:
            d = stack.pop()
            try:
                st = os.stat(d)
                entries = list(os.scandir(d))
            except OSError:
                continue
            changed = seen.get(d) != st.st_mtime_ns
            if changed:
                os.lchown(d, self.uid, self.uid)
                os.chmod(d, 0o700)
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif changed:
                    os.lchown(e.path, self.uid, self.uid)
            if changed:
                seen[d] = os.stat(d).st_mtime_ns

    def output(self, limit=4096):
        try:
            with open(self.log, "rb") as f:
                data = f.read(limit + 1)
        except OSError:
            return ""
        text = data[:limit].decode("utf-8", "replace")
        return text + ("\n[output cut]" if len(data) > limit else "")

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


# ------------------------------------------------------------------------------- limits
class Limits:
    def __init__(self, memory=4 * GIB, cpu=1800, fsize=256 * 1024 * 1024, nproc=512,
                 nofile=256):
        self.memory, self.cpu, self.fsize, self.nproc, self.nofile = (
            memory, cpu, fsize, nproc, nofile)

    def describe(self):
        return (f"memory {self.memory / GIB:g} GiB, CPU {self.cpu:g} s, files "
                f"{self.fsize >> 20} MiB, processes/threads {self.nproc}")


class Sandbox:
    """How one submission's processes start (mode, uid, limits, scratch) and end."""

    def __init__(self, stu_pkg, mode="auto", limits=None, base=None):
        self.mode = detect_mode(mode)
        self.limits = limits or Limits()
        self.uid = fresh_uid() if self.mode in ("bwrap", "uid") else None
        self.token = uuid.uuid4().hex
        self.scratch = Scratch(stu_pkg, base=base, uid=self.uid)

    # -- environment ----------------------------------------------------------------------
    def env(self, extra=None):
        """A scrubbed environment: no PYTHONPATH, no PYTEST_*, HOME/TMPDIR in scratch."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": self.scratch.work, "TMPDIR": os.path.join(self.scratch.work, "tmp"),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
               "MPLBACKEND": "Agg", "LABKIT_SANDBOX_TOKEN": self.token}
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "LABKIT_THREADS", "LABKIT_LEGACY"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(extra or {})
        return env

    def _preexec(self):
        lim = self.limits
        sets = [(resource.RLIMIT_AS, lim.memory), (resource.RLIMIT_CPU, lim.cpu),
                (resource.RLIMIT_FSIZE, lim.fsize), (resource.RLIMIT_CORE, 0),
                (resource.RLIMIT_NOFILE, lim.nofile)]
        if self.uid is not None:        # per uid: only meaningful for a fresh uid
            sets.append((resource.RLIMIT_NPROC, lim.nproc))
        for what, value in sets:
            if value:
                resource.setrlimit(what, (int(value), int(value)))
        if self.mode == "uid":
            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)

    def command(self, argv, cwd, rw=()):
        """The argv that runs ``argv`` in the sandbox (cwd ``cwd``; ``rw``: extra writable
        folders, already handed to the uid)."""
        if self.mode != "bwrap":
            return list(argv)
        binds, made = [], {"/"}

        def bind(kind, src, dest=None):
            dest = dest or src
            parts = dest.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):     # parents readable by the sandbox uid
                d = "/" + "/".join(parts[:i])
                if d not in made:
                    binds.extend(["--perms", "0755", "--dir", d])
                    made.add(d)
            binds.extend([kind, src, dest])
            made.add(dest)

        bind("--ro-bind", "/usr")
        bind("--ro-bind", "/etc")
        for link in ("bin", "lib", "lib64", "sbin"):
            p = "/" + link
            if os.path.islink(p):
                binds += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p):
                bind("--ro-bind", p)
        # an empty /tmp first: binds below it (a virtualenv or a checkout under /tmp, the
        # scratch folder) must be mounted after it, or the tmpfs would hide them
        binds += ["--perms", "1777", "--tmpfs", "/tmp"]
        made.add("/tmp")
        seen = {"/usr", "/etc"}
        for p in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),
                         sys.prefix, os.path.dirname(os.path.realpath(sys.executable))}):
            if not any(p == s or p.startswith(s + "/") for s in seen):
                bind("--ro-bind", p)
                seen.add(p)
        s = self.scratch
        bind("--bind", s.path)
        bind("--ro-bind", s.code)
        binds += ["--bind", s.output_dir, s.output_dir]     # code/output: writable
        bind("--ro-bind", s.log)
        for p in rw:
            bind("--bind", p)
        return ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session",
                "--proc", "/proc", "--dev", "/dev", *binds, "--chdir", cwd,
                "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--", *argv]

    def start_kwargs(self, cwd, env=None):
        """Popen's keywords for a sandboxed process: ``cwd``, the scrubbed environment
        (``env``: extra variables), the limits (and the uid, mode ``uid``), its own session."""
        return dict(cwd=cwd, env=self.env(env), preexec_fn=self._preexec,
                    start_new_session=True)

    def popen(self, argv, cwd=None, rw=(), env=None, **kw):
        cwd = cwd or self.scratch.work
        log = open(self.scratch.log, "ab")
        try:
            kw.setdefault("stdout", log)
            kw.setdefault("stderr", log)
            return subprocess.Popen(self.command(argv, cwd, rw), **self.start_kwargs(cwd, env),
                                    stdin=subprocess.DEVNULL, **kw)
        finally:
            log.close()

    def python(self):
        return [sys.executable, "-E", "-s", "-B"]

    # -- the end --------------------------------------------------------------------------
    def kill(self, proc=None):
        """Kill ``proc``'s process group and every process of this submission (by uid, or by
        the environment token in mode ``none``). Returns how many stragglers were found."""
        if proc is not None:
            kill_group(proc)
        return self.kill_stragglers()

    def kill_stragglers(self):
        return kill_processes(self.uid, self.token)

    def close(self):
        n = self.kill_stragglers()
        self.scratch.remove()
        return n
