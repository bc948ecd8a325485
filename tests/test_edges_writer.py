"""Issue 21, the one writer (labkit.runtime.cli.atomic_path) behind every output: an existing
target that is not a regular file (folder, device, FIFO, socket) is refused and left as it
is; a symbolic link is written through (the link stays, its target gets the new content);
new files get the umask's permissions, replaced ones keep theirs; a full disk is one
OutputError, the previous file intact and no temporary file left. Then the same through the
commands (calibrate --out, main_exp_3_1.py --dump-pool5) in subprocesses."""
import contextlib
import os
import resource
import signal
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

from labkit.runtime import cli
from labkit.runtime.cli import OutputError, atomic_output, atomic_path, check_output_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, data=b"new", **kw):
    with atomic_path(path, **kw) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def leftovers(folder):
    return [n for n in os.listdir(folder) if ".tmp-" in n]


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def make_device(path):
    """A character device node like /dev/full (1, 7), made in the test's folder."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here ({exc.strerror}); no root or no CAP_MKNOD")
    return path


def make_socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    return path


KINDS = {"folder": lambda p: os.mkdir(p), "fifo": lambda p: os.mkfifo(p),
         "device": make_device, "socket": make_socket}
KIND_WORDS = {"folder": "a folder", "fifo": "a FIFO", "device": "a device",
              "socket": "a socket"}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("through_link", [False, True], ids=["direct", "via-link"])
def test_non_regular_target_is_refused_and_left_alone(tmp_path, kind, through_link):
    target = str(tmp_path / "thing")
    KINDS[kind](target)
    before = os.lstat(target)
    path = target
    if through_link:
        path = str(tmp_path / "link.npz")
        os.symlink(target, path)
    with pytest.raises(OutputError, match=KIND_WORDS[kind]) as err:
        write(path)
    assert path in str(err.value) and "\n" not in str(err.value)
    after = os.lstat(target)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert not leftovers(tmp_path)
    if through_link:
        assert os.path.islink(path)
    with pytest.raises(OutputError, match=KIND_WORDS[kind]):
        check_output_path(path, "--out")          # the commands' early check says the same


def test_writes_through_a_symlink_and_keeps_it(tmp_path):
    real = tmp_path / "store" / "quant.npz"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "quant.npz"
    os.symlink(real, link)
    write(str(link))
    assert os.path.islink(link) and os.readlink(link) == str(real)
    assert real.read_bytes() == b"new"
    assert not leftovers(tmp_path) and not leftovers(real.parent)


def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "out.npy"
    os.symlink(tmp_path / "made.npy", link)
    write(str(link))
    assert os.path.islink(link) and (tmp_path / "made.npy").read_bytes() == b"new"


def test_symlink_loop_is_one_error(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    os.symlink(b, a)
    os.symlink(a, b)
    with pytest.raises(OutputError, match="out"):
        write(str(a), flag="--out")


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_get_the_umask_permissions(tmp_path, mask, expected):
    with umask(mask):
        write(str(tmp_path / "f.npz"))
    assert stat.S_IMODE(os.stat(tmp_path / "f.npz").st_mode) == expected


def test_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    with umask(0o077):
        write(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and path.read_bytes() == b"new"


def test_error_in_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old" and not leftovers(tmp_path)


def test_missing_folder_is_one_error(tmp_path):
    with pytest.raises(OutputError, match="--out"):
        write(str(tmp_path / "no" / "such" / "f.npz"), flag="--out")
    with atomic_output(str(tmp_path / "made" / "f.npz"), "--out") as tmp:
        open(tmp, "wb").write(b"x")
    assert (tmp_path / "made" / "f.npz").read_bytes() == b"x"


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a full file system: a 64 KiB tmpfs mounted for the test where mount
    works (root), else the folder itself under a 64 KiB file-size limit (RLIMIT_FSIZE,
    SIGXFSZ ignored): both make write() fail with ENOSPC/EFBIG."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if not mounted:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old_limit[1]))
    try:
        yield str(folder), mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_full_disk_is_one_message_and_keeps_the_old_file(full_disk):
    folder, _ = full_disk
    path = os.path.join(folder, "quant.npz")
    write(path, b"old" * 100)
    with pytest.raises(OutputError) as err:
        write(path, b"x" * (256 * 1024), flag="--out")
    text = str(err.value)
    assert text.startswith("--out: writing") and ("no space" in text or "larger" in text)
    with open(path, "rb") as f:
        assert f.read() == b"old" * 100
    assert not leftovers(folder)


# ----------------------------------------------------------------------- through the commands
def run(args, cwd=ROOT, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300, **kw)


def assert_one_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len([x for x in lines if x.startswith("error:")]) == 1, r.stderr
    assert all(x.startswith(("error:", "  ", "warning:")) for x in lines), r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from labkit.runtime.fixtures import write_vgg19_mat
    from labkit.runtime.images import make_demo_image, save_rgb
    folder = tmp_path_factory.mktemp("writer")
    weights = str(folder / "w.mat")
    write_vgg19_mat(weights, width_div=64, num_classes=3, fc_width=4, seed=1)
    image = str(folder / "img.png")
    save_rgb(make_demo_image(40, 50), image)
    return weights, image


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_calibrate_refuses_a_non_regular_out(small, tmp_path, kind):
    weights, image = small
    target = str(tmp_path / "q.npz")
    KINDS[kind](target)
    r = run(["-m", "labkit.runtime.calibrate", "--weights", weights, "--images", image,
             "--out", target])
    assert_one_error(r, "--out", target)
    assert not stat.S_ISREG(os.lstat(target).st_mode)


def test_calibrate_through_a_link_with_umask_permissions(small, tmp_path):
    weights, image = small
    real = tmp_path / "shared" / "q.npz"
    real.parent.mkdir()
    link = tmp_path / "q.npz"
    os.symlink(real, link)
    r = run(["-m", "labkit.runtime.calibrate", "--weights", weights, "--images", image,
             "--out", str(link)], preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr
    assert os.path.islink(link) and stat.S_IMODE(os.stat(real).st_mode) == 0o644
    with np.load(real) as data:
        assert set(data.files) == {"input", "filter"}


def test_dump_pool5_to_a_fifo_is_refused_before_inference(small, tmp_path):
    weights, image = small
    fifo = str(tmp_path / "p.npy")
    os.mkfifo(fifo)
    r = run([os.path.join(ROOT, "main_exp_3_1.py"), "--weights", weights, "--image", image,
             "--dump-pool5", fifo, "--quiet"])
    assert_one_error(r, "--dump-pool5", "FIFO")
    assert "Inference time" not in r.stdout and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_calibrate_on_a_full_disk_is_one_message(small, full_disk):
    weights, image = small
    folder, mounted = full_disk
    out = os.path.join(folder, "q.npz")
    with open(out, "wb") as f:
        f.write(b"previous")
    ballast = os.path.join(folder, "ballast")
    if mounted:                                   # fill the tmpfs, leaving a few bytes
        with contextlib.suppress(OSError), open(ballast, "wb") as f:
            while True:
                f.write(b"\0" * 1024)
                f.flush()
    r = run(["-m", "labkit.runtime.calibrate", "--weights", weights, "--images", image,
             "--out", out])
    assert_one_error(r, "--out", out)
    with open(out, "rb") as f:
        assert f.read() == b"previous"
    assert not leftovers(folder)


def test_read_only_file_system_is_one_message(tmp_path):
    """A read-only mount (root: a tmpfs remounted ro; others: a folder without write
    permission, which root would bypass)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "old.npz").write_bytes(b"old")
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                  str(folder)], capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("root without mount: a read-only folder cannot be made")
        (folder / "old.npz").write_bytes(b"old")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        os.chmod(folder, 0o555)
    try:
        for name in ("old.npz", "new.npz"):
            with pytest.raises(OutputError, match="--out: cannot write") as err:
                write(str(folder / name), flag="--out")
            assert "Read-only" in str(err.value) or "Permission" in str(err.value)
            with pytest.raises(cli.UserError, match="--out: cannot write"):
                check_output_path(str(folder / name), "--out")
        assert (folder / "old.npz").read_bytes() == b"old"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            os.chmod(folder, 0o755)
