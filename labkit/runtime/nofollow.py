"""Files that someone else's code may have written, read and written without following links.

The sandboxed grader runs the tests as root, and a test often reads or rewrites what the
student's driver left in the test's temporary folder (the pool5 dump, the saved images, the
loss log). The student's code could have left a symbolic link there instead (to a host file,
or re-pointed between two steps of the test): root would then read or write through it. Here
every path is taken relative to an ``anchor`` folder that the test made itself (``tmp_path``:
only its own contents may be the student's), and each component below the anchor is opened
with ``O_NOFOLLOW`` relative to the folder before it (``dir_fd``): a link anywhere below the
anchor is an ``OSError`` (ELOOP / ENOTDIR), never followed.

    from labkit.runtime import nofollow
    data = nofollow.read_bytes(tmp_path, "pool5.npy")
    nofollow.write_bytes(tmp_path, "pool5.npy", data)     # replaces the entry itself
    names = nofollow.glob(tmp_path, "out/*_log.csv")       # ["out/x_log.csv"]
    with nofollow.open(tmp_path, "out/x_log.csv", "r") as f: ...
"""
import builtins
import fnmatch
import os
import stat

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _parts(rel):
    parts = [p for p in str(rel).replace(os.sep, "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{rel}: '..' is not allowed below the anchor")
    return parts


def open_dir(anchor, rel=""):
    """A file descriptor of the folder ``anchor/rel`` (no link followed below ``anchor``)."""
    fd = os.open(str(anchor), os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in _parts(rel):
            nxt = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _split(anchor, rel):
    parts = _parts(rel)
    if not parts:
        raise ValueError("a file name is needed below the anchor")
    return open_dir(anchor, "/".join(parts[:-1])), parts[-1]


def open(anchor, rel, mode="rb", encoding=None):        # noqa: A001 (like builtins.open)
    """``builtins.open`` of ``anchor/rel`` for reading ("r", "rb") or writing ("w", "wb": the
    entry is removed first and a new file created with O_EXCL, so a link planted meanwhile
    makes this fail instead of writing through it)."""
    if mode not in ("r", "rb", "w", "wb"):
        raise ValueError(f"mode {mode!r}: only r, rb, w, wb")
    dfd, name = _split(anchor, rel)
    try:
        if mode.startswith("r"):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(f"{rel}: not a regular file")
            os.set_blocking(fd, True)
        else:
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                         dir_fd=dfd)
    finally:
        os.close(dfd)
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding=encoding or "utf-8")


def read_bytes(anchor, rel):
    with open(anchor, rel, "rb") as f:
        return f.read()


def read_text(anchor, rel, encoding="utf-8"):
    with open(anchor, rel, "r", encoding=encoding) as f:
        return f.read()


def write_bytes(anchor, rel, data):
    with open(anchor, rel, "wb") as f:
        f.write(data)


def listdir(anchor, rel=""):
    fd = open_dir(anchor, rel)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def glob(anchor, pattern):
    """The paths relative to ``anchor`` that match ``pattern`` ("*_log.csv", "out/*.npz":
    the pattern in its last component only), sorted; no link followed below ``anchor``."""
    head, _, pat = str(pattern).rpartition("/")
    return [f"{head}/{n}" if head else n for n in listdir(anchor, head)
            if fnmatch.fnmatchcase(n, pat)]
