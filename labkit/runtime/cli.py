"""Command-line plumbing shared by the main_exp_*.py drivers (not a student file).

The kit's rule for errors (README, "Errors"): every input a user gives is checked before
any slow work starts; a bad one gets exit code 2 and ONE message naming the file or flag,
what is wrong and what to do (:class:`UserError` and the readers' errors, printed by
:func:`run_main`); outputs are written atomically (:func:`atomic_output`), so a failure
leaves the old file or the new one, never half of one; the path printed is the path written.
"""
import argparse
import contextlib
import hashlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request

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


def check_output_path(path, flag):
    """Fail fast (before any slow work) when ``path`` cannot be written: its folder is
    created if missing and probed with a temporary file. Raises UserError naming ``flag``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name (e.g. {path}/out.npz).")
    folder = os.path.dirname(os.path.abspath(path))
    check_output_dir(folder, flag, shown=os.path.dirname(path) or ".")
    return path


def check_output_dir(folder, flag, shown=None):
    """Create ``folder`` if needed and check that a file can be written there."""
    shown = shown or folder
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag}: cannot use {shown} as a folder: a file of that name exists. "
                        f"Choose another path.") from None
    except OSError as exc:
        raise UserError(f"{flag}: cannot create the folder {shown}: {exc.strerror or exc}. "
                        f"Choose a folder you can write to.") from None
    if not os.path.isdir(folder):
        raise UserError(f"{flag}: {shown} is not a folder. Choose another path.")
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


@contextlib.contextmanager
def atomic_path(path, mode=None):
    """``with atomic_path(path) as tmp:`` write the file ``tmp``; when the block ends without
    an error it is renamed onto exactly ``path``, on any error (or Ctrl-C) it is removed and
    ``path`` is left as it was. Errors pass through unchanged; the folder must exist.

    ``tmp`` is a new empty file made by ``mkstemp`` in ``path``'s folder (so the rename is
    atomic and concurrent writers never share it), named ``.<name>.tmp-XXXXXXXX.part<ext>``:
    ``path``'s extension stays last, because Pillow picks the format from it and SciPy's
    ``savemat`` appends ``.mat`` when it is missing. Its permissions are mkstemp's (0600,
    owner only) unless ``mode`` is given: ``mode=0o666`` gives what ``open()`` would,
    ``mode & ~umask``."""
    path = os.fspath(path)
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", suffix=".part" + os.path.splitext(name)[1],
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        os.close(fd)
        if mode is not None:
            os.chmod(tmp, mode & ~_umask())
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_output(path, flag="output"):
    """``with atomic_output(path) as tmp:`` write to the file ``tmp``; on success it is renamed
    to exactly ``path`` (same folder, so the rename is atomic), on any failure it is removed
    and ``path`` is left as it was (see :func:`atomic_path`); the folder is created. An
    OSError (full disk, no permission) becomes a UserError naming ``flag`` and ``path``."""
    path = os.fspath(path)
    started = False
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path) as tmp:
            started = True
            yield tmp
    except OSError as exc:
        if not started:
            raise UserError(f"{flag}: cannot write {path}: {exc.strerror or exc}. Choose a "
                            f"folder you can write to.") from None
        raise UserError(f"{flag}: writing {path} failed: {exc.strerror or exc} (nothing was "
                        f"left behind; a full disk?). Free space or choose another "
                        f"folder.") from None


def reader_errors():
    """The exception types of the kit's readers, all printed as one message by run_main."""
    from labkit.runtime.images import ImageLoadError
    from labkit.runtime.matfile import WeightsFileError
    return (UserError, WeightsFileError, ImageLoadError)


def run_main(main):
    """Call ``main()``; print known user errors as one clear message and exit 2, and turn
    Ctrl-C into exit 130 (the drivers save their state before re-raising it). The legacy
    shim is installed first (see ``install_legacy``)."""
    install_legacy()
    errors = reader_errors()
    try:
        return main()
    except errors as exc:
        print_error(exc)
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

    Writes to ``dest + '.part'`` and renames only after the checksum matches, so an
    interrupted or failed download never leaves a file that looks complete.
    """
    from tqdm import tqdm
    check_output_path(dest, "--weights")
    part = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest),
                      disable=None) as bar:           # no bar when not on a terminal
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        if os.path.exists(part):
            os.remove(part)
        raise UserError(f"download of {url} failed: {exc}.\n  Without internet access, "
                        f"download the file on another machine and copy it to {dest}.") from None
    got = md5sum(part)
    if md5 and got != md5:
        raise UserError(f"the downloaded file's MD5 is {got}, expected {md5}; it was kept as "
                        f"{part} for inspection. Try the download again.")
    os.replace(part, dest)
    return dest
