"""Command-line plumbing shared by the main_exp_*.py drivers (not a student file).

The kit's rule for errors (README, "Errors"): every input a user gives is checked before
any slow work starts; a bad one gets exit code 2 and ONE message naming the file or flag,
what is wrong and what to do (:class:`UserError` and the readers' errors, printed by
:func:`run_main`); outputs are written atomically (:func:`atomic_output`), so a failure
leaves the old file or the new one, never half of one; the path printed is the path written.
"""
import argparse
import contextlib
import errno
import hashlib
import math
import os
import re
import signal
import stat
import sys
import tempfile

from labkit.runtime import vgg19_spec as spec

DEFAULT_WEIGHTS = os.path.join("models", spec.REAL_FILE_NAME)
# the folder holding labkit/ (the repository, or the unpacked student kit)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class UserError(Exception):
    """An error caused by input the user can fix; the drivers print it without a traceback."""


def print_error(message, stream=None):
    """Print ``message`` as the kit's ONE error line: ``error: <first line>``, any further
    lines indented by two spaces (so no other line starts with ``error:``)."""
    lines = str(message).splitlines() or [""]
    text = "error: " + lines[0] + "".join(
        "\n" + (line if line.startswith("  ") or not line.strip() else "  " + line)
        for line in lines[1:])
    stream = sys.stderr if stream is None else stream
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):        # stderr closed or a broken pipe: nothing to tell
        pass


_ARG_RE = re.compile(r"^argument ([^:]+): (.*)$", re.S)


def usage_message(message, prog="the command"):
    """argparse's message -> one sentence naming the option, what is wrong and what to do."""
    helps = f"`{prog} --help` lists the options"
    m = _ARG_RE.match(message)
    if m:
        option, what = m.group(1).split("/")[-1], m.group(2)
        v = re.match(r"invalid (int|float) value: (.*)$", what)
        if v:
            kind = "a whole number" if v.group(1) == "int" else "a number"
            return f"{option} {v.group(2)}: not {kind}; give {kind} after {option} ({helps})."
        v = re.match(r"invalid choice: (.*?) \(choose from (.*)\)$", what, re.S)
        if v:
            return f"{option} {v.group(1)}: not a valid choice; choose one of {v.group(2)}."
        if what.startswith("expected"):
            return (f"{option} needs a value ({what[len('expected '):]}): write it after "
                    f"{option}, e.g. {option} VALUE ({helps}).")
        if "not allowed with argument" in what:
            return f"{option}: {what}; give only one of the two."
        return f"{option}: {what} ({helps})."
    if message.startswith("unrecognized arguments:"):
        return (f"unknown option or extra value: {message.split(':', 1)[1].strip()}; check "
                f"the spelling ({helps}).")
    if message.startswith("the following arguments are required:"):
        return f"missing {message.split(':', 1)[1].strip()}: give it ({helps})."
    if message.startswith("ambiguous option:"):
        return f"{message}; write the option in full."
    return f"{message.rstrip().rstrip('.')} ({helps})."


class LabParser(argparse.ArgumentParser):
    """The kit's argparse: a bad command line prints ONE ``error:`` line naming the option,
    what is wrong and what to do (:func:`usage_message`), and exits with code 2; no usage
    block (``--help`` still prints the full help). Defaults are shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print_error(usage_message(message, self.prog))
        sys.exit(2)


NO_LEGACY_FLAG = "--no-legacy"
NO_LEGACY_HELP = ("do not install the legacy shim (np.float & co., scipy.misc.imread/imresize/"
                  "imsave) for student code written for the original lab's NumPy/SciPy")


def install_legacy(argv=None):
    """Install labkit.runtime.legacy before student code is imported, unless ``--no-legacy``
    is among the arguments or ``LABKIT_LEGACY=0``."""
    from labkit.runtime import legacy
    argv = sys.argv[1:] if argv is None else argv
    if NO_LEGACY_FLAG in argv:
        return False
    return legacy.install()


def default_locations(path):
    """Where a default (relative) path is looked for: the current folder, then the
    repository. Absolute paths and paths given by the user are used as they are."""
    path = os.fspath(path)
    places = [path]
    if not os.path.isabs(path):
        in_repo = os.path.join(REPO_ROOT, path)
        if os.path.abspath(in_repo) != os.path.abspath(path):
            places.append(in_repo)
    return places


def find_default(path):
    """``path`` if it exists, else its copy under the repository if that exists, else
    ``path`` unchanged (the caller's "not found" message lists ``default_locations``)."""
    for place in default_locations(path):
        if os.path.exists(place):
            return place
    return os.fspath(path)


def looked_in(path):
    """'looked in: A (relative to the current folder X) and B' for "not found" messages."""
    places = default_locations(path)
    text = f"{os.path.abspath(places[0])}"
    if len(places) > 1:
        text += f" and {os.path.abspath(places[1])} (the repository)"
    return f"looked for {text}"


def default_output_dir(name="output"):
    """The default output folder: ``./output`` when the current folder has one (the
    repository's root), else the repository's ``output/``."""
    return name if os.path.isdir(name) else os.path.join(REPO_ROOT, name)


EXAMPLE_NAMES = {"--out": "vgg19_quant_param_new.npz", "--dump-pool5": "pool5.npy",
                 "--weights": spec.REAL_FILE_NAME}


def check_output_path(path, flag):
    """Fail fast (before any slow work) when ``path`` cannot be written: something that is
    not a regular file in the way (:func:`output_target`), or a folder that cannot be
    created or written (probed with a temporary file). Raises UserError naming ``flag``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        name = EXAMPLE_NAMES.get(flag, "out" + (os.path.splitext(path)[1] or ".npz"))
        raise OutputError(f"{flag} {path} is a folder; give a file name (e.g. "
                          f"{os.path.join(path, name)}).")
    target, _ = output_target(path, flag)
    folder = os.path.dirname(os.path.abspath(target))
    check_output_dir(folder, flag, shown=os.path.dirname(target) or ".")
    return path


def check_output_dir(folder, flag, shown=None):
    """Create ``folder`` if needed and check that a file can be written there (probed with a
    temporary file), before any slow work. Raises UserError naming ``flag``."""
    shown = shown or folder
    if os.path.lexists(folder) and not os.path.isdir(folder):
        try:
            kind = "a file" if os.path.isfile(folder) else file_kind(os.stat(folder).st_mode)
        except OSError:
            kind = "a broken link"
        raise UserError(f"{flag} {shown} is {kind}, not a folder; pass a folder name.")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {shown} cannot be created ({exc.strerror or exc}); pass a "
                        f"folder you can write to.") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"{flag}: cannot write in {shown}: {exc.strerror or exc}. "
                        f"Choose a folder you can write to.") from None
    return folder


def _umask():
    """The process's umask, read without changing it where Linux allows (no window in
    which another thread would create files with a zero umask)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class OutputError(UserError):
    """An output that cannot be written: something that is not a regular file in the way
    (a folder, device, FIFO, socket), no permission, a full disk. One message, exit 2."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode):
    """'a folder', 'a device', ... for an ``st_mode`` that is not a regular file."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def output_target(path, flag="output"):
    """The file that writing ``path`` replaces, and its permission bits (None if new).

    A symbolic link is written THROUGH: the target is the file it points to (the link
    stays). A target that exists and is not a regular file (a folder, a device such as
    ``/dev/null``, a FIFO, a socket) is refused with an :class:`OutputError`: the kit never
    replaces one with a regular file."""
    path = os.fspath(path)
    target = os.path.realpath(path) if os.path.islink(path) else path
    shown = path if target == path else f"{path} (a link to {target})"
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, None
    except OSError as exc:
        raise OutputError(f"{flag}: cannot write {shown}: {exc.strerror or exc}. Choose "
                          f"another path.") from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{flag} {shown} is {file_kind(st.st_mode)}, not a regular file; "
                          f"it was left as it is. Give the path of a file to write.")
    return target, stat.S_IMODE(st.st_mode)


def write_failure(flag, path, exc):
    """One message for an OSError while writing ``path``."""
    code = getattr(exc, "errno", None)
    reason = exc.strerror or str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (f"{flag}: writing {path} failed: no space left on the device (disk full or "
                f"over quota). The previous file, if any, is unchanged and no partial file was "
                f"left; free some space or choose another folder.")
    if code == errno.EFBIG:
        return (f"{flag}: writing {path} failed: the file is larger than allowed (a file-size "
                f"limit). The previous file, if any, is unchanged; choose another folder or "
                f"raise the limit.")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{flag}: cannot write {path}: {reason}. Choose a folder you can write to.")
    return (f"{flag}: writing {path} failed: {reason}. The previous file, if any, is "
            f"unchanged; choose another folder.")


@contextlib.contextmanager
def atomic_path(path, mode=0o666, flag="output"):
    """THE writer of every output: ``with atomic_path(path) as tmp:`` write the file
    ``tmp``; when the block ends without an error it is renamed onto the target, on any
    error (or Ctrl-C) it is removed and the target is left as it was.

    * the target is ``path``, or the file a symbolic link ``path`` points to (written
      through the link, which stays: :func:`output_target`); an existing target that is
      not a regular file is refused (:class:`OutputError`) before anything is written;
    * ``tmp`` is a new file made by ``mkstemp`` in the target's folder (so the rename is
      atomic and concurrent writers never share it), named ``.<name>.tmp-XXXXXXXX.part<ext>``:
      the extension stays last, because Pillow picks the format from it and SciPy's
      ``savemat`` appends ``.mat`` when it is missing;
    * permissions: a replaced file keeps its own; a new one gets ``mode & ~umask`` (what
      ``open()`` gives: 0644 under the usual umask 022);
    * an OSError (full disk, no permission, missing folder) becomes ONE
      :class:`OutputError` naming ``flag`` and ``path``; no partial file is left."""
    path = os.fspath(path)
    target, old_mode = output_target(path, flag)
    name = os.path.basename(target)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-",
                                   suffix=".part" + os.path.splitext(name)[1],
                                   dir=os.path.dirname(os.path.abspath(target)))
        os.close(fd)
        os.chmod(tmp, old_mode if old_mode is not None else mode & ~_umask())
        yield tmp
        output_target(path, flag)       # nothing but a regular file appeared meanwhile
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise OutputError(write_failure(flag, path, exc)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)


@contextlib.contextmanager
def atomic_output(path, flag="output"):
    """:func:`atomic_path` with the folder created first (an error naming ``flag`` if it
    cannot be)."""
    path = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{flag}: cannot create the folder of {path}: "
                          f"{exc.strerror or exc}. Choose a folder you can write to.") from None
    with atomic_path(path, flag=flag) as tmp:
        yield tmp


def input_problem(path):
    """What stops ``path`` from being read as an input file, as a phrase that follows the
    path in a message ("... {path} {phrase}"), or None when it is a non-empty regular file
    this process can open. Missing, unreachable, a folder, a device/FIFO/socket (never
    opened: reading one could block or never end), unreadable (permissions) and empty are
    told apart; whether the content is right is each reader's own check (damaged, wrong
    kind)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ("not found (a link to a missing file)" if os.path.islink(path) else
                f"not found (looked for {os.path.abspath(path)})")
    except NotADirectoryError:
        return "not found (a part of its path is a file, not a folder)"
    except PermissionError:
        return ("cannot be reached: permission denied on a folder of its path; fix the "
                "folder's permissions or copy the file")
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file; pass the file itself"
    if not stat.S_ISREG(st.st_mode):
        return f"is {file_kind(st.st_mode)}, not a regular file; pass a file"
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return (f"cannot be read: permission denied (fix its permissions, e.g. chmod a+r "
                f"{path}, or copy the file)")
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if st.st_size == 0:
        return "is empty (0 bytes)"
    return None


def check_input(path, flag, what="file", how="", error=None):
    """Raise ``error`` (UserError by default) naming ``flag`` when :func:`input_problem`
    finds one; ``how`` (what to do) is appended to the message."""
    problem = input_problem(path)
    if problem:
        raise (error or UserError)(f"{flag}: {what} {path} {problem}{'; ' + how if how else ''}.")
    return os.fspath(path)


def check_number(value, flag, low=None, low_ok=True, high=None):
    """A number as the run will use it: finite and within [low, high] (``low_ok=False``:
    strictly above ``low``); else a UserError naming ``flag`` and the accepted range."""
    bad = not math.isfinite(value)
    bad = bad or (low is not None and (value < low or (value == low and not low_ok)))
    bad = bad or (high is not None and value > high)
    if bad:
        bound = "" if low is None else f" {'>=' if low_ok else '>'} {low:g}"
        if high is not None:
            bound += f"{' and' if bound else ''} <= {high:g}"
        raise UserError(f"{flag} {value:g}: must be a finite number{bound}.")
    return value


FLOAT32_TINY = 1.1754943508222875e-38     # float32's smallest normal number


def normalised_weights(values, flag, names):
    """Weights as the run uses them: each finite and >= 0, at least one positive, scaled
    to sum to 1 without overflow (1e308 twice is 0.5 each, not 0 from an infinite sum);
    a positive weight that vanishes next to the others (below float32's smallest normal
    number once normalised) is refused, as it would silently drop that layer or image. ``names`` label the values in messages."""
    values = [float(v) for v in values]
    for name, v in zip(names, values):
        if not math.isfinite(v) or v < 0:
            raise UserError(f"{flag}: the weight of {name} is {v:g}; weights must be finite "
                            f"numbers >= 0.")
    top = max(values, default=0.0)
    if not top > 0:
        raise UserError(f"{flag}: give at least one positive weight.")
    scaled = [v / top for v in values]
    total = math.fsum(scaled)
    out = [v / total for v in scaled]
    for name, v, w in zip(names, values, out):
        if v > 0 and not w >= FLOAT32_TINY:
            big = names[values.index(top)]
            raise UserError(f"{flag}: the weight of {name} ({v:g}) vanishes next to {big}'s "
                            f"({top:g}): it would count for nothing. Give weights closer "
                            f"together, or 0 to leave it out.")
    return out


def reader_errors():
    """The exception types of the kit's readers, all printed as one message by run_main."""
    from labkit.runtime.checkpoint import CheckpointError
    from labkit.runtime.images import ImageLoadError
    from labkit.runtime.matfile import WeightsFileError
    return (UserError, WeightsFileError, ImageLoadError, CheckpointError)


# OSErrors of the machine rather than of the kit: printed as one message, exit 2
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM,
                      errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE)


class PipeSafeStream:
    """``sys.stdout``/``sys.stderr`` for the drivers: when the reader of a pipe goes away
    (``python main_exp_3_3.py ... | head``), further output is dropped quietly instead of a
    BrokenPipeError traceback, and the run goes on to save its files. The file descriptor
    is pointed at /dev/null, so the interpreter's last flush is quiet too."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def _drop(self):
        self.broken = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, self._stream.fileno())
            os.close(fd)

    def write(self, text):
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def environment_message(exc):
    """One message for an OSError of the machine that reached run_main."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"{where}{exc.strerror} (a full disk, a quota or a file-size limit); the "
                f"files written before are intact. Free some space or choose another folder.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{where}{exc.strerror}; fix the permissions or choose another path.")
    return f"{where}{exc.strerror or exc}; check the disk and try again."


def guard_streams():
    """Wrap stdout and stderr in :class:`PipeSafeStream` (once); let a file-size limit
    (RLIMIT_FSIZE) be an EFBIG error, reported like a full disk, instead of killing the
    process (SIGXFSZ)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, PipeSafeStream):
            setattr(sys, name, PipeSafeStream(stream))
    if hasattr(signal, "SIGXFSZ"):
        with contextlib.suppress(ValueError, OSError):     # not the main thread
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def run_main(main):
    """Call ``main()``; print known user errors as one clear message and exit 2, and turn
    Ctrl-C into exit 130 (the drivers save their state before re-raising it). The legacy
    shim is installed first (see ``install_legacy``); stdout/stderr survive a closed pipe
    (:func:`guard_streams`); an OSError of the machine (full disk, permissions) that no
    reader or writer turned into a message is still one message and exit 2."""
    guard_streams()
    install_legacy()
    errors = reader_errors()
    try:
        return main()
    except errors as exc:
        print_error(exc)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        print_error(environment_message(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        sys.exit(130)


def md5sum(path, chunk=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download_weights(dest, url=spec.LEGACY_URL, md5=spec.LEGACY_MD5, timeout=30):
    """Download the real weights to ``dest`` with a progress bar and an MD5 check.

    Through the one writer (:func:`atomic_output`): the download goes to a temporary file
    renamed only after the checksum matches, so an interrupted or failed download never
    leaves a file that looks complete, and ``dest`` may not be a device, FIFO or folder.
    """
    import urllib.error         # lazily: the drivers' start-up
    import urllib.request
    from tqdm import tqdm
    check_output_path(dest, "--weights")
    with atomic_output(dest, "--weights") as part:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, \
                    open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest),
                          disable=None) as bar:           # no bar when not on a terminal
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise UserError(f"download of {url} failed: {exc}.\n  Without internet access, "
                            f"download the file on another machine and copy it to "
                            f"{dest}.") from None
        except OSError as exc:
            if exc.errno in ENVIRONMENT_ERRNOS:
                raise                   # a full disk: the writer's message
            raise UserError(f"download of {url} failed: {exc.strerror or exc}.\n  Without "
                            f"internet access, download the file on another machine and copy "
                            f"it to {dest}.") from None
        got = md5sum(part)
        if md5 and got != md5:
            raise UserError(f"the downloaded file's MD5 is {got}, expected {md5}; it was "
                            f"discarded (nothing written to {dest}). Try the download again.")
    return dest
