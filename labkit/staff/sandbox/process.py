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
MARKER = ".labkit_scratch"
WORKER_DIR = "_w"                # code/_w/worker.py: no name that says "grading"
DISK_BYTES = 2 * GIB            # a submission's scratch folder (work, tmp, output) at most
DISK_FILES = 200_000
TMP_BYTES = 512 * 1024 ** 2     # the sandbox's /tmp (tmpfs: counted in the memory cgroup)
MAX_SUBMISSION_BYTES = 50 * 1024 * 1024
GRADER_MEMORY = 6 * GIB         # the grader's own data; a full grading's peak is about 2.3 GiB
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


UID_CHOICE = ("grade with the weaker, explicit '--sandbox uid' (a dropped uid without "
              "namespaces: the reference, the tests and the hidden fixtures must be unreadable "
              "to other users; README, 'Threat model')")


def limit_grader_memory(limit=GRADER_MEMORY):
    """Bound the grader's own data (RLIMIT_DATA: its heap and private memory, Linux >= 4.7)
    at ``limit`` bytes, never raising a lower limit. The sandbox bounds the submission's
    processes; what the grader holds is the submission's answers and what tests compute from
    them: an answer of zero pages costs the worker nothing, but the grader reads it whole,
    and broadcast against a test's array it can grow many times over, outside every sandbox
    limit (a batch's other gradings share the machine). Past the limit an allocation fails
    (MemoryError): that test fails, or the grading ends incomplete; fails closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    new = int(limit) if hard == resource.RLIM_INFINITY else min(int(limit), hard)
    if soft == resource.RLIM_INFINITY or soft > new:
        resource.setrlimit(resource.RLIMIT_DATA, (new, hard))
    return new


def detect_mode(requested="auto"):
    """The mode that will run: ``requested`` if it works here, else an error. ``auto`` is
    ``bwrap`` only, verified by starting bubblewrap with new namespaces; it never falls back
    to a weaker mode silently (fail closed): ``uid`` and ``none`` must be asked for."""
    if requested in _MODE_CACHE:
        return _MODE_CACHE[requested]
    root = os.geteuid() == 0
    if requested == "auto":
        if not _bwrap_works():
            if not root:
                raise SandboxError("no sandbox: the grader is not root, so bubblewrap cannot "
                                   "make the sandbox user; run it as root, or pass "
                                   "'--sandbox none' to grade with resource limits only "
                                   "(student code then runs with your rights)")
            raise SandboxError("no sandbox verified: bubblewrap is missing or cannot create "
                               "namespaces here (an unprivileged container?); install or "
                               "allow it, or " + UID_CHOICE)
        mode = "bwrap"
    elif requested == "bwrap" and not _bwrap_works():
        raise SandboxError("--sandbox=bwrap: bubblewrap is missing or cannot create namespaces "
                           "here (it needs root, CAP_SYS_ADMIN and 'apt-get install "
                           "bubblewrap')")
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
    return kill_until_gone(lambda: processes_of_uid(uid) if uid is not None
                           else processes_with_token(token))


def kill_until_gone(list_pids):
    """SIGKILL the processes ``list_pids()`` names until it names none (50 rounds at most).
    Returns how many were found."""
    found = 0
    for _ in range(50):
        pids = list_pids()
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
def _expected_modules():
    from labkit.runtime.student import NAMES
    return {"__init__"} | {n for names in NAMES.values() for n in names}


def _code_suffixes():
    import importlib.machinery as m
    return tuple(set(m.all_suffixes()) - {".py"}) + (".pth", ".pyc", ".pyo", ".egg-link")


def open_dir_nofollow(path, what="the submission folder"):
    """A file descriptor of the folder ``path``, opened one component at a time from ``/``
    with O_NOFOLLOW: a symbolic link anywhere on the way (the folder itself, its parent, a
    link a student planted in a submission's tree) is refused, SandboxError naming the link
    and its target (a grader that followed it would grade, or write, what the link points
    at: the reference, a classmate's folder)."""
    path = os.path.abspath(path)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open("/", flags)
    done = "/"
    try:
        for part in [p for p in path.split(os.sep) if p]:
            here = os.path.join(done, part)
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                try:
                    st = os.lstat(part, dir_fd=fd)
                except OSError:
                    st = None
                if st is not None and stat.S_ISLNK(st.st_mode):
                    try:
                        target = os.readlink(part, dir_fd=fd)
                    except OSError:
                        target = "?"
                    raise SandboxError(
                        f"{here if here != path else os.path.basename(path)} is a symbolic link "
                        f"(to {target!r}); refused: {what} and the folders above it must be "
                        f"real folders (submit the folder itself; staff: give its real path, "
                        f"realpath)") from None
                raise SandboxError(f"cannot open {what} {path}: {exc.strerror}") from None
            os.close(fd)
            fd, done = nfd, here
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_submission(src):
    """A file descriptor of the submission folder ``src``, no link followed on the way
    (``open_dir_nofollow``: a symbolic link, the folder or any folder above it, is refused,
    SandboxError with the reason)."""
    return open_dir_nofollow(src)


def copy_submission(src, dest, limit=MAX_SUBMISSION_BYTES):
    """Copy the submission ``src`` (its top folder only) into ``dest`` through file
    descriptors that follow no link: only regular files are taken, ``.py`` files only under
    the kit's module names; sub-folders (packages), links, extension modules (``.so``),
    ``.pyc``/``.pth`` and other ``.py`` files are refused and listed in the notes (they would
    run instead of, or beside, the files staff read). At most ``limit`` bytes. Returns the
    notes (one line per refused entry)."""
    notes, total = [], 0
    expected, code = _expected_modules(), _code_suffixes()
    os.makedirs(dest, exist_ok=True)
    fd = open_submission(src)
    try:
        for name in sorted(os.listdir(fd)):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            shown = ascii(name)[1:-1]
            if stat.S_ISLNK(st.st_mode):
                notes.append(f"refused {shown}: a symbolic link")
                continue
            if stat.S_ISDIR(st.st_mode):
                if name != "__pycache__":
                    notes.append(f"refused {shown}/: a folder (a package would shadow the "
                                 f"module of that name)")
                continue
            if not stat.S_ISREG(st.st_mode):
                notes.append(f"refused {shown}: not a regular file")
                continue
            if name.endswith(code) or ".cpython-" in name:
                notes.append(f"refused {shown}: compiled code, an extension module or a "
                             f"start-up hook (only the .py source is graded)")
                continue
            if name.endswith(".py") and name[:-3] not in expected:
                notes.append(f"refused {shown}: not one of the kit's module files")
                continue
            ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            with os.fdopen(ffd, "rb") as fi:
                if not stat.S_ISREG(os.fstat(ffd).st_mode):
                    continue
                data = fi.read(limit - total + 1)
            total += len(data)
            if total > limit:
                raise SandboxError(f"submission larger than {limit >> 20} MB")
            with open(os.path.join(dest, name), "xb") as fo:
                fo.write(data)
    finally:
        os.close(fd)
    return notes


# ------------------------------------------------------------------------------- hand-over
def _hand_over_fd(fd, uid, mode):
    os.fchown(fd, uid, uid)
    os.fchmod(fd, mode)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _under(path, roots):
    return any(path == r or path.startswith(r + os.sep) for r in roots)


def _claim_entry(fd, name, est, uid):
    """An entry of a folder the grader has just made its own again: the sandbox uid's links,
    FIFOs and sockets are removed (root would follow or block on them), its files replaced
    by root's copies (group ``uid``, mode kept: readable, no longer writable by it). A copy,
    not a change of owner: a process of the submission that kept the file open for writing
    (a straggler racing the take-back) writes on into the old file, never into what the
    grader reads (the red-team's fixture rewrite)."""
    if est.st_uid != uid:
        return
    if stat.S_ISLNK(est.st_mode) or stat.S_ISFIFO(est.st_mode) or stat.S_ISSOCK(est.st_mode):
        try:
            os.unlink(name, dir_fd=fd)
        except OSError:
            pass
    elif stat.S_ISREG(est.st_mode):
        try:
            ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            return
        try:
            fst = os.fstat(ffd)
            if stat.S_ISREG(fst.st_mode) and fst.st_uid == uid:
                _replace_with_copy(fd, name, ffd, stat.S_IMODE(fst.st_mode) & 0o755, uid)
        finally:
            os.close(ffd)


def _replace_with_copy(dir_fd, name, src_fd, mode, gid):
    """Replace the entry ``name`` of the folder ``dir_fd`` (root's: no one else adds an
    entry there) by a root-owned copy of the open file ``src_fd``."""
    tmp = f".labkit-claim-{os.getpid()}"
    try:
        os.unlink(tmp, dir_fd=dir_fd)
    except OSError:
        pass
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                      dir_fd=dir_fd)
    except OSError:
        os.unlink(name, dir_fd=dir_fd)      # no copy: not left writable by the uid either
        return
    try:
        os.set_blocking(src_fd, True)
        offset = 0
        while True:
            try:
                n = os.copy_file_range(src_fd, out, 1 << 26, offset, offset)
            except (AttributeError, OSError):
                block = os.pread(src_fd, 1 << 22, offset)
                n = os.write(out, block) if block else 0
            if not n:
                break
            offset += n
        os.fchown(out, 0, gid)
        os.fchmod(out, mode)
    except OSError:
        os.close(out)
        os.unlink(tmp, dir_fd=dir_fd)
        os.unlink(name, dir_fd=dir_fd)
        return
    os.close(out)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _outermost(folders):
    """The folders of ``folders`` not below another of them (sorted)."""
    out = []
    for f in sorted(os.path.normpath(f) for f in folders):
        if not _under(f, out):
            out.append(f)
    return out


def hand_over(top, uid, keep=0, seen=None, max_entries=200_000, given=None, record=None,
              watch=None):
    """Set who may write the folders under ``top``, through file descriptors only (every
    entry opened with O_NOFOLLOW relative to its folder's fd, then fchown/fchmod), so a link
    or a swapped folder planted by the submission is never followed.

    Folders at depth <= ``keep`` stay root's (mode 0711: passed through, not renamed into).
    Below: ``given`` None hands every folder to ``uid`` (mode 0700; root-owned regular files
    with one link too: a test's input that student code rewrites). Otherwise only the
    folders in ``given`` (absolute paths) and everything below them are handed over; every
    other folder is made root's (group ``uid``, mode 0750: the sandbox may read what a test
    gives it, never add, replace or link an entry) and what the uid left in it (links,
    FIFOs, sockets) is removed, its files made root's. ``seen``: {(dev, ino): (mtime_ns,
    given)} of folders already done (their entries rescanned only when changed).
    ``record``: a dict filled with {path: (dev, ino, mtime_ns, ctime_ns)} of every folder
    left root's, as it is after the walk. ``watch``: called with the fd of every folder left
    root's once its owner and mode are set, before its entries are read (a FolderWatch's
    ``add``: what changes there afterwards is reported). Returns False when the walk stopped
    early (more than ``max_entries`` entries, or a folder it could not finish), else True."""
    if uid is None:
        return True
    seen = {} if seen is None else seen
    roots = None if given is None else [os.path.normpath(g) for g in given]
    try:
        top_fd = os.open(top, _DIR_FLAGS)
    except OSError:
        return False
    stack, count, complete = [(top_fd, 0, os.path.normpath(top), False)], 0, True
    while stack:
        fd, depth, path, inside = stack.pop()
        try:
            st = os.fstat(fd)
            mine = depth > keep and (roots is None or inside or _under(path, roots))
            if depth <= keep:
                if st.st_uid != 0:
                    os.fchown(fd, 0, 0)
                os.fchmod(fd, 0o711)
            elif mine:
                if st.st_uid == 0:
                    _hand_over_fd(fd, uid, 0o700)
            else:
                if st.st_uid != 0 or st.st_gid != uid:
                    os.fchown(fd, 0, uid)       # first: then no entry can be added
                if stat.S_IMODE(st.st_mode) != 0o750:
                    os.fchmod(fd, 0o750)
            if watch is not None and not mine:
                watch(fd)
            key = (st.st_dev, st.st_ino)
            changed = seen.get(key) != (st.st_mtime_ns, mine)
            for name in os.listdir(fd):
                count += 1
                if count > max_entries:
                    complete = False
                    break
                try:
                    est = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(est.st_mode):
                    try:
                        stack.append((os.open(name, _DIR_FLAGS, dir_fd=fd), depth + 1,
                                      os.path.join(path, name), mine))
                    except OSError:
                        complete = False
                elif not changed or depth <= keep:
                    continue
                elif not mine:
                    _claim_entry(fd, name, est, uid)
                elif stat.S_ISREG(est.st_mode) and est.st_uid == 0 and est.st_nlink == 1:
                    try:
                        ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                                      dir_fd=fd)
                    except OSError:
                        continue
                    try:
                        fst = os.fstat(ffd)
                        if stat.S_ISREG(fst.st_mode) and fst.st_uid == 0 and \
                                fst.st_nlink == 1:
                            os.fchown(ffd, uid, uid)
                    finally:
                        os.close(ffd)
            seen[key] = (st.st_mtime_ns, mine)
            if record is not None and not mine:
                st = os.fstat(fd)
                record[path] = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            complete = False
        finally:
            os.close(fd)
    return complete


# the BLAS and engine threads of a process (run_grading shares the cores among its parts)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LABKIT_THREADS")


class FolderWatch:
    """inotify on the folders a whole hand-over walk left root's (Linux; ``FolderWatch.new()``
    is None elsewhere): whether any of them changed since, in one read instead of an lstat
    of each (a full grade makes about 22,000 calls into student code, each after a
    ``give``). A change is what the lstat check saw: an entry created, removed or renamed
    in a watched folder, or the folder's own owner, mode or times changed, it removed or
    moved; an entry's own attributes are not (a given folder's, chowned by the hand-over,
    or chmodded by the uid). A lost event (the queue overflowed) or any error counts as a
    change; a watch that cannot be added makes the watch unusable (``ok`` False: the
    caller checks by lstat). inotify does not see a file system mounted over a folder (the
    lstat check did: another device), so a change of this process's mount table counts as
    a change too (``/proc/self/mounts`` polls as changed, proc(5)); where that file cannot
    be watched, the watch is unusable."""
    IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x4, 0x40, 0x80, 0x100, 0x200
    IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = (
        0x400, 0x800, 0x2000, 0x4000, 0x8000)
    IN_ONLYDIR, IN_NONBLOCK, IN_CLOEXEC = 0x1000000, 0o4000, 0o2000000
    ENTRY = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
    SELF = IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
    MASK = ENTRY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
    _libc = None

    @classmethod
    def new(cls):
        """A watch with no folders yet, or None where inotify is not available."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            if cls._libc is None:
                import ctypes
                libc = ctypes.CDLL(None, use_errno=True)
                libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p,
                                                   ctypes.c_uint32]
                cls._libc = libc
            fd = cls._libc.inotify_init1(cls.IN_NONBLOCK | cls.IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        watch = cls(fd)
        try:
            watch._mounts = open("/proc/self/mounts", "rb")     # (before any folder's watch)
            import select
            watch._poll = select.poll()
            watch._poll.register(watch._mounts, select.POLLPRI | select.POLLERR)
        except (OSError, AttributeError):
            watch.ok = False
        return watch

    def __init__(self, fd):
        self.fd, self.ok, self._changed = fd, True, False
        self._mounts = self._poll = None

    def add(self, folder_fd):
        """Watch the folder open at ``folder_fd`` (that inode, through /proc/self/fd)."""
        if not self.ok:
            return
        wd = self._libc.inotify_add_watch(self.fd, f"/proc/self/fd/{folder_fd}".encode(),
                                          self.MASK)
        if wd < 0:
            self.ok = False

    def changed(self):
        """Whether a watched folder changed since it was watched (sticky)."""
        import struct
        if not self._changed and self._poll is not None:
            try:
                self._changed = bool(self._poll.poll(0))    # a mount or unmount since
            except OSError:
                self._changed = True
        while not self._changed:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                self._changed = True
                break
            if not data:
                break
            at = 0
            while at + 16 <= len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, at)
                at += 16 + size
                if mask & self.IN_Q_OVERFLOW or mask & (self.ENTRY if size else self.SELF):
                    self._changed = True
                    break
        return self._changed

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd, self.ok = None, False
        if self._mounts is not None:
            self._mounts.close()
            self._mounts = self._poll = None


class Scratch:
    """One submission's scratch folder: ``code/`` (read-only for the sandboxed processes:
    the submission's stu_upload, labkit/__init__.py + labkit/runtime, the drivers, the worker)
    and ``work/`` (theirs: cwd, HOME, TMPDIR), ``tmp/`` (the tests' temporary files)."""

    def __init__(self, stu_pkg, base=None, uid=None, work_limit=None):
        import tempfile
        self.path = os.path.realpath(tempfile.mkdtemp(prefix="sbx", dir=base))
        os.chmod(self.path, 0o711)
        self.code = os.path.join(self.path, "code")
        self.work = os.path.join(self.path, "work")
        self.work_mounted = False
        if work_limit is not None:      # (bytes, files): the kernel bounds work/ at once
            self._mount_work(*work_limit)
        self.tmp = os.path.join(self.path, "tmp")
        self.log = os.path.join(self.path, "output.log")
        self.uid = uid
        self._seen = {}
        self._given, self._leases = set(), {}
        self._walked, self._root_side = None, {}    # the last whole walk (give)
        self._watch = None                          # its FolderWatch (None: lstat)
        with open(os.path.join(self.path, MARKER), "w", encoding="utf-8") as f:
            f.write("labkit grading scratch folder\n")     # (root's: a killed grader's
        #                                                      leftovers are recognised by it)
        self.package = os.path.join(self.code, PACKAGE)
        self.notes = copy_submission(stu_pkg, self.package)
        shutil.copytree(os.path.join(ROOT, "labkit", "runtime"),
                        os.path.join(self.code, "labkit", "runtime"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(os.path.join(ROOT, "labkit", "__init__.py"),
                    os.path.join(self.code, "labkit", "__init__.py"))
        for name in DRIVERS + KIT_ROOT_FILES:
            if os.path.isfile(os.path.join(ROOT, name)):
                shutil.copy(os.path.join(ROOT, name), os.path.join(self.code, name))
        os.makedirs(os.path.join(self.code, WORKER_DIR))
        for name in ("worker.py", "wire.py"):
            shutil.copy(os.path.join(HERE, name), os.path.join(self.code, WORKER_DIR, name))
        self.output_dir = os.path.join(self.code, "output")    # the drivers' default output
        os.makedirs(self.output_dir, exist_ok=True)              # folder: writable
        # code/: root's, readable by this submission's uid only (group), not by other
        # submissions graded at the same time (mode uid shares one file system)
        gid = uid if uid is not None else os.getgid()
        dmode, fmode = (0o750, 0o640) if uid is not None else (0o755, 0o644)
        for dirpath, dirnames, filenames in os.walk(self.code):
            os.chown(dirpath, 0 if uid is not None else -1, gid)
            os.chmod(dirpath, dmode)
            for n in filenames:
                os.chown(os.path.join(dirpath, n), 0 if uid is not None else -1, gid)
                os.chmod(os.path.join(dirpath, n), fmode)
        self.share_dir = os.path.join(self.path, "share")
        for d in (self.work, os.path.join(self.work, "tmp"), self.tmp, self.share_dir):
            os.makedirs(d, exist_ok=True)
        hand_over(self.work, uid, keep=-1)          # before any student code runs
        hand_over(self.output_dir, uid, keep=-1)
        os.chmod(self.tmp, 0o711)
        os.chmod(self.share_dir, 0o755)
        open(self.log, "ab").close()

    def share(self, path):
        """A read-only copy of the grader's file ``path`` that the sandboxed processes can
        read; returns its path. For test data such as the full-size lab fixture, never for
        answers. ``path`` is opened with O_NOFOLLOW (a link is refused: SandboxError) and
        only that open file is shared: a hard link to it (kept only when it links the
        very inode that was checked) when it is the grader's own regular file, already
        readable by others and writable by no one else; else a copy read from the open
        file. No mode of the grader's file is ever changed."""
        import hashlib
        path = os.path.abspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                         getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise SandboxError(f"cannot share {path}: {exc.strerror} (a link is refused)")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SandboxError(f"cannot share {path}: not a regular file")
            folder = os.path.join(self.share_dir, hashlib.sha1(
                f"{path}:{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:12])
            dest = os.path.join(folder, os.path.basename(path))
            if os.path.lexists(dest):
                return dest
            os.makedirs(folder, mode=0o755, exist_ok=True)
            os.chmod(folder, 0o755)
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid == os.geteuid() and mode & 0o004 and not mode & 0o022:
                try:            # the entry now; kept only when it is the inode checked
                    os.link(path, dest, follow_symlinks=False)
                    lst = os.lstat(dest)
                    if stat.S_ISREG(lst.st_mode) and (lst.st_dev, lst.st_ino) == (
                            st.st_dev, st.st_ino):
                        return dest
                    os.unlink(dest)
                except OSError:
                    pass
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
            with os.fdopen(out, "wb") as fo:
                os.lseek(fd, 0, os.SEEK_SET)
                os.set_blocking(fd, True)
                while True:
                    block = os.read(fd, 1 << 22)
                    if not block:
                        break
                    fo.write(block)
            return dest
        finally:
            os.close(fd)

    def give(self):
        """Before student code runs (each call into it, each driver): the folders under the
        tests' folder ``tmp`` that a test gave to student code (``give_folder``, a driver's
        working and output folders while it runs: ``lease``) are handed to the sandbox uid;
        every other folder there is the grader's (readable by the uid, not writable) and
        what the uid left in it is removed (``hand_over``: file descriptors, no link
        followed).

        Cheap enough to run before every call to student code: after a whole walk, only the
        uid's folders can change without the grader (every other folder is root's, not
        writable by the uid, nor is the folder it is in), so the next calls walk only the
        given folders, after checking that no root-side folder that walk recorded changed
        (inotify: FolderWatch; else one lstat of each: a test's new folder changes its
        parent's mtime). A change there, or in the given
        folders' set (``give_folder``, ``lease``, ``take_back``), walks the whole tree
        again."""
        given = frozenset(self._given) | frozenset(self._leases)
        if given == self._walked and self._root_side_unchanged():
            for top in _outermost(given):
                hand_over(top, self.uid, keep=-1, seen=self._seen)
            return
        record, watch = {}, FolderWatch.new()
        complete = hand_over(self.tmp, self.uid, keep=1, seen=self._seen, given=given,
                             record=record, watch=watch.add if watch is not None else None)
        if self._watch is not None:
            self._watch.close()
        self._walked, self._root_side, self._watch = (given if complete else None), record, watch

    def _root_side_unchanged(self):
        """Whether every folder the last whole walk left root's is still the same folder,
        with no entry added, removed or renamed and no mode or owner changed: by inotify
        (FolderWatch) where it watches them all, else one lstat of each."""
        if self._watch is not None and self._watch.ok:
            return not self._watch.changed()
        for p, sig in self._root_side.items():
            try:
                st = os.lstat(p)
            except OSError:
                return False
            if (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) != sig:
                return False
        return True

    def _in_tmp(self, folder):
        folder = os.path.normpath(os.path.abspath(str(folder)))
        rel = os.path.relpath(folder, self.tmp)
        if rel == ".." or rel.startswith(".." + os.sep) or len(rel.split(os.sep)) < 2:
            return None             # outside; tmp and tmp/t stay the grader's
        return folder

    def give_folder(self, folder):
        """Give ``folder`` (a test's own folder under ``tmp``) to student code for good: it
        may write there, links included (read what it wrote with labkit.runtime.nofollow,
        or take it back first: ``take_back``). Returns whether it was given (False: not a
        test's folder)."""
        folder = self._in_tmp(folder)
        if folder is None:
            return False
        self._given.add(folder)
        self.give()
        return True

    def lease(self, folders):
        """Give ``folders`` (test folders under ``tmp``) to student code until
        ``take_back`` (a driver's, while it runs). Returns the folders leased."""
        got = [f for f in map(self._in_tmp, folders) if f is not None]
        for f in got:
            self._leases[f] = self._leases.get(f, 0) + 1
        if got:
            self.give()
        return got

    def take_back(self, folders):
        """End a lease (or a ``give_folder``): the folders are the grader's again, the uid's
        links, FIFOs and sockets in them removed and its files made root's, before the
        grader reads them."""
        for f in map(self._in_tmp, folders):
            if f is None:
                continue
            self._given.discard(f)
            n = self._leases.get(f, 0) - 1
            if n > 0:
                self._leases[f] = n
            else:
                self._leases.pop(f, None)
        self.give()

    def purge(self):
        """Remove what the submission wrote (``work/``, ``output/``, its files under the
        tests' folder) after it passed the disk limit, so the next worker starts under it;
        through file descriptors (no link followed). Call with its processes killed."""
        dflags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        for top in (self.work, self.output_dir):
            try:
                fd = os.open(top, dflags)
            except OSError:
                continue
            try:
                for name in os.listdir(fd):
                    try:
                        if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                            shutil.rmtree(name, dir_fd=fd, ignore_errors=True)
                        else:
                            os.unlink(name, dir_fd=fd)
                    except OSError:
                        pass
            finally:
                os.close(fd)
        os.makedirs(os.path.join(self.work, "tmp"), exist_ok=True)
        hand_over(self.work, self.uid, keep=-1)
        if self.uid is None:
            return
        stack = []
        try:
            stack.append(os.open(self.tmp, dflags))
        except OSError:
            pass
        while stack:
            fd = stack.pop()
            try:
                for name in os.listdir(fd):
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            stack.append(os.open(name, dflags, dir_fd=fd))
                        elif st.st_uid == self.uid:
                            os.unlink(name, dir_fd=fd)
                    except OSError:
                        pass
            finally:
                os.close(fd)

    def usage(self, limit_files=DISK_FILES + 1):
        """(bytes, files) under ``work`` and ``tmp`` (no link followed), counting stops
        after ``limit_files`` entries."""
        total, files = 0, 0
        for top in (self.work, self.tmp, self.output_dir):
            stack = [top]
            while stack and files < limit_files:
                d = stack.pop()
                try:
                    with os.scandir(d) as it:
                        for e in it:
                            files += 1
                            try:
                                st = e.stat(follow_symlinks=False)
                            except OSError:
                                continue
                            total += st.st_blocks * 512
                            if stat.S_ISDIR(st.st_mode):
                                stack.append(e.path)
                except OSError:
                    pass
        return total, files

    def output(self, limit=4096):
        try:
            with open(self.log, "rb") as f:
                data = f.read(limit + 1)
        except OSError:
            return ""
        text = data[:limit].decode("utf-8", "replace")
        return text + ("\n[output cut]" if len(data) > limit else "")

    def _mount_work(self, size, files):
        """work/ (the sandbox's cwd, HOME, TMPDIR) as a tmpfs of ``size`` bytes and ``files``
        inodes: a write or posix_fallocate past it fails at once (ENOSPC), where the watcher
        polls once a second (8 GiB fallocated in 0.02 s got past it); its pages are charged
        to the writer's memory cgroup. Fails closed: SandboxError when it cannot be mounted."""
        os.makedirs(self.work)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                            f"size={int(size)},nr_inodes={int(files)},mode=0700,nosuid,nodev",
                            "labkit-scratch", self.work], capture_output=True, text=True)
        if r.returncode != 0:
            shutil.rmtree(self.path, ignore_errors=True)
            raise SandboxError(f"cannot mount the scratch folder's size-limited file system "
                               f"(mount -t tmpfs: {(r.stderr or r.stdout).strip()[:200]}); "
                               f"not graded")
        self.work_mounted = True

    def remove(self):
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self.work_mounted:
            subprocess.run(["umount", "-l", self.work], capture_output=True)
            self.work_mounted = False
        shutil.rmtree(self.path, ignore_errors=True)


# ------------------------------------------------------------------------------- limits
class Limits:
    """``memory``: per process (address space); the submission's processes together (its
    cgroup, where one can be made, with its ``/tmp``) get ``total_memory``."""

    def __init__(self, memory=4 * GIB, cpu=1800, fsize=256 * 1024 * 1024, nproc=512,
                 nofile=256, total_memory=None, disk=DISK_BYTES, files=DISK_FILES):
        self.memory, self.cpu, self.fsize, self.nproc, self.nofile = (
            memory, cpu, fsize, nproc, nofile)
        self.total_memory = total_memory or int(max(1.5 * memory, memory + GIB))
        self.disk, self.files = disk, files

    def describe(self):
        return (f"memory {self.memory / GIB:g} GiB per process, {self.total_memory / GIB:g} "
                f"GiB per submission, CPU {self.cpu:g} s, files {self.fsize >> 20} MiB, "
                f"scratch {self.disk / GIB:g} GiB / {self.files} files, processes/threads "
                f"{self.nproc}")


# ------------------------------------------------------------------------------- cgroups
def _cgroup_mounts():
    """{'memory': mount, 'pids': mount} of cgroup v1, or {'v2': mount}."""
    out = {}
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 4:
                    continue
                if parts[2] == "cgroup":
                    for c in ("memory", "pids"):
                        if c in parts[3].split(","):
                            out.setdefault(c, parts[1])
                elif parts[2] == "cgroup2":
                    out.setdefault("v2", parts[1])
    except OSError:
        pass
    return out


def _own_cgroup(controller):
    """This process's cgroup path for a v1 ``controller`` ('' for v2), or '/'."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if controller in ctrls.split(",") or (controller == "" and ctrls == ""):
                    return path
    except (OSError, ValueError):
        pass
    return "/"


class Cgroup:
    """One submission's control group: its processes' memory together (what they hold, the
    tmpfs ``/tmp`` of the sandbox) and how many there are, bounded by the kernel; the
    members are found and killed from it. cgroup v1 (memory, pids) or v2, below the
    grader's own cgroup when that is visible, else at the hierarchy's root. ``paths`` is
    empty where none can be made (not root, no cgroup file system): then the Watcher sums
    the processes' memory instead."""
    _oom_fds = None             # the OOM-count files, opened at the first read

    def __init__(self, name, memory, pids):
        self.paths = []
        if os.geteuid() != 0:
            return
        mounts = _cgroup_mounts()
        try:
            if "memory" in mounts:
                for ctrl in ("memory", "pids"):
                    if ctrl not in mounts:
                        continue
                    path = self._make(mounts[ctrl], _own_cgroup(ctrl), name)
                    if ctrl == "memory":
                        self._write(path, "memory.limit_in_bytes", memory)
                        if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
                            self._write(path, "memory.memsw.limit_in_bytes", memory)
                    else:
                        self._write(path, "pids.max", pids)
            elif "v2" in mounts:
                path = self._make(mounts["v2"], _own_cgroup(""), name)
                self._write(path, "memory.max", memory)
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    self._write(path, "memory.swap.max", 0)
                if os.path.exists(os.path.join(path, "memory.oom.group")):
                    self._write(path, "memory.oom.group", 1)    # an OOM kills them all
                self._write(path, "pids.max", pids)
        except OSError:
            self.remove()
            self.paths = []

    def _make(self, mount, own, name):
        base = os.path.join(mount, own.strip("/"))
        if not os.path.isdir(base):
            base = mount
        path = os.path.join(base, name)
        os.mkdir(path, 0o755)
        self.paths.append(path)
        return path

    @staticmethod
    def _write(path, name, value):
        with open(os.path.join(path, name), "w", encoding="ascii") as f:
            f.write(str(int(value)))

    @property
    def memory_bounded(self):
        return any(os.path.exists(os.path.join(p, f)) for p in self.paths
                   for f in ("memory.limit_in_bytes", "memory.max"))

    def join(self):
        """Put the calling process in the cgroup (a child, before exec; the grader's own
        writes: the sandboxed code cannot leave it, the files are root's)."""
        for p in self.paths:
            with open(os.path.join(p, "cgroup.procs"), "w", encoding="ascii") as f:
                f.write(str(os.getpid()))

    def pids(self):
        found = set()
        for p in self.paths:
            try:
                with open(os.path.join(p, "cgroup.procs"), encoding="ascii") as f:
                    found.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def oom_kills(self):
        """How many times the kernel killed a member for memory (the ``oom_kill`` count of
        v2 memory.events / v1 memory.oom_control). Read after every call into student code:
        the files that exist are opened once and read again from the start (a cgroup file
        is made anew at each read)."""
        fds = self._oom_fds
        if fds is None:
            fds = self._oom_fds = []
            for p in self.paths:
                for name in ("memory.events", "memory.oom_control"):
                    try:
                        fds.append(os.open(os.path.join(p, name),
                                           os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
                    except OSError:
                        pass
        for fd in fds:
            try:
                for line in os.pread(fd, 1 << 16, 0).decode("ascii").splitlines():
                    k, _, v = line.partition(" ")
                    if k == "oom_kill" and int(v) > 0:
                        return int(v)
            except (OSError, ValueError):
                pass
        return 0

    def _close_oom_fds(self):
        for fd in self._oom_fds or ():
            try:
                os.close(fd)
            except OSError:
                pass
        self._oom_fds = None

    def kill(self):
        return kill_until_gone(self.pids)

    def remove(self):
        self._close_oom_fds()
        found = self.kill()
        for p in self.paths:
            found += self.remove_path(p)
        return found

    @staticmethod
    def remove_path(path):
        """Kill what is left in the cgroup folder ``path`` and remove it (also for a killed
        grader's leftovers); only folders of a cgroup file system."""
        if not (isinstance(path, str) and path.startswith("/") and
                os.path.isfile(os.path.join(path, "cgroup.procs"))):
            return 0
        cg = Cgroup.__new__(Cgroup)
        cg.paths = [path]
        found = cg.kill()
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
        return found


def _rss_of(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


class Watcher:
    """A thread that checks, every ``period`` seconds, the submission's scratch folder
    (bytes, files) and, where no memory cgroup bounds them, the memory its processes hold
    together; past a limit it kills them all and says why (``violation``)."""

    def __init__(self, sandbox, period=1.0):
        import threading
        self.sandbox, self.period = sandbox, period
        self.violation = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="labkit-watcher")
        self._thread.start()

    def check(self):
        sb, lim = self.sandbox, self.sandbox.limits
        used, files = sb.scratch.usage(lim.files + 1)
        if used > lim.disk or files > lim.files:
            return (f"its files in the scratch folder passed the limit of {lim.disk / GIB:g} "
                    f"GiB / {lim.files} files ({used / GIB:.2f} GiB, {files} files; removed)",
                    "disk")
        if not sb.cgroup.memory_bounded:
            pids = sb.members()
            rss = _rss_of(pids)
            if rss > lim.total_memory:
                return (f"its processes together held {rss / GIB:.2f} GiB, past the "
                        f"{lim.total_memory / GIB:g} GiB per submission", "memory")
        return None

    def _run(self):
        while not self._stop.wait(self.period):
            try:
                why = self.check()
            except Exception:       # the watcher must not die of a vanished folder
                why = None
            if why:
                self.violation = why[0]
                try:
                    self.sandbox.kill_stragglers()
                    if why[1] == "disk":
                        self.sandbox.scratch.purge()
                except Exception:
                    pass

    def stop(self):
        self._stop.set()


class Sandbox:
    """How one submission's processes start (mode, uid, limits, scratch) and end."""

    def __init__(self, stu_pkg, mode="auto", limits=None, base=None, watch=True, hidden=None):
        self.mode = detect_mode(mode)
        self.limits = limits or Limits()
        self.uid = fresh_uid() if self.mode in ("bwrap", "uid") else None
        self.token = uuid.uuid4().hex       # mode none only: how its processes are found
        self.scratch = Scratch(stu_pkg, base=base, uid=self.uid, work_limit=(
            (self.limits.disk, self.limits.files) if self.mode in ("bwrap", "uid") else None))
        self.cgroup = Cgroup(os.path.basename(self.scratch.path), self.limits.total_memory,
                             self.limits.nproc)
        if self.mode == "uid":
            self.check_uid_isolation(uid_secret_paths(hidden=hidden))
        self.watcher = Watcher(self) if watch else None

    def check_uid_isolation(self, paths=None):
        """Mode uid: refuse to grade (SandboxError) when the sandbox uid can read the
        reference solution, the tests' source or the hidden fixtures' reference outputs
        (tried as that uid, in a child process, before any student code runs)."""
        paths = paths if paths is not None else uid_secret_paths()
        if not paths:
            return
        uid = self.uid

        def drop():
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        r = subprocess.run(["/bin/sh", "-c", 'for p; do [ -r "$p" ] && echo "$p"; done; exit 0',
                            "sh", *paths], cwd="/", preexec_fn=drop, capture_output=True,
                           text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
        readable = [line for line in r.stdout.splitlines() if line]
        if r.returncode != 0 or readable:
            self.close()
            raise SandboxError(
                "--sandbox uid: the sandbox user can read "
                + (", ".join(readable[:3]) if readable else "(the probe failed)")
                + (f" and {len(readable) - 3} more" if len(readable) > 3 else "")
                + "; make the reference, the tests and the hidden fixtures unreadable to "
                  "other users (chmod o-rwx on their folders, Python kept readable), or "
                  "grade with bubblewrap")

    def members(self):
        """The submission's processes now (cgroup, else uid, else token)."""
        pids = self.cgroup.pids()
        if not pids:
            pids = (processes_of_uid(self.uid) if self.uid is not None
                    else processes_with_token(self.token))
        return pids

    # -- environment ----------------------------------------------------------------------
    def env(self, extra=None):
        """A scrubbed environment: no PYTHONPATH, no PYTEST_*, HOME/TMPDIR in scratch."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": self.scratch.work, "TMPDIR": os.path.join(self.scratch.work, "tmp"),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
               "MPLBACKEND": "Agg"}
        if self.uid is None:        # mode none: the token is how its processes are found
            env["LABKIT_SANDBOX_TOKEN"] = self.token
        for key in THREAD_VARS + ("LABKIT_LEGACY",):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(extra or {})
        return env

    def _preexec(self):
        lim = self.limits
        sets = [(resource.RLIMIT_AS, lim.memory), (resource.RLIMIT_CPU, lim.cpu),
                (resource.RLIMIT_FSIZE, lim.fsize), (resource.RLIMIT_CORE, 0),
                (resource.RLIMIT_NOFILE, lim.nofile),
                # the grader's own data limit (limit_grader_memory) is not the sandbox's
                (resource.RLIMIT_DATA, resource.getrlimit(resource.RLIMIT_DATA)[1])]
        if self.uid is not None:        # per uid: only meaningful for a fresh uid
            sets.append((resource.RLIMIT_NPROC, lim.nproc))
        for what, value in sets:
            if value:
                resource.setrlimit(what, (int(value), int(value)))
        self.cgroup.join()
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
        binds += ["--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
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
        return self.cgroup.kill() + kill_processes(self.uid, self.token)

    def close(self):
        if getattr(self, "watcher", None) is not None:
            self.watcher.stop()
        n = self.kill_stragglers() + self.cgroup.remove()
        self.scratch.remove()
        return n


def uid_secret_paths(root=ROOT, hidden=None):
    """Files the sandbox uid must not be able to read in mode uid: the ``.py`` files of the
    reference solution, the tests and the hidden tests, and the hidden fixtures' reference
    outputs (one readable file is enough to refuse)."""
    out = []
    for folder in (os.path.join(root, PACKAGE), os.path.join(root, "tests"),
                   hidden or os.path.join(root, "tests_hidden")):
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
        except OSError:
            continue
        out += [os.path.join(folder, n) for n in names[:50]]
    import tempfile
    for fixtures in (os.environ.get("LABKIT_LAB_FIXTURES"),
                     os.path.join(tempfile.gettempdir(), "labkit-lab-fixtures-seed19")):
        if fixtures and os.path.exists(os.path.join(fixtures, "reference_cat1.npz")):
            out.append(os.path.join(fixtures, "reference_cat1.npz"))
    return out


def main(argv=None):
    """``python -m labkit.staff.sandbox.process MODE``: prints the mode that would run, exit 0;
    or the reason it cannot, exit 4 (the Gradescope recipe checks its mode so)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        print(detect_mode(argv[0] if argv else "auto"))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
