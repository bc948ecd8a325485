"""Issue 21, the error rule on every path of every command: exit 0 with the promised
outputs, or exit 2 with ONE ``error:`` line; never a traceback, never a replaced non-regular
file. A bad command line names the option and what to do, without a usage block
(cli.LabParser); generated file kinds (Hypothesis: regular, empty, truncated, garbage,
folder, FIFO, device, links, missing) for exp 3.1 and calibrate; unreadable files (as
another user), a closed pipe, python -I, the output folder, redirected logs and a full file
system."""
import os
import subprocess
import sys

import pytest

from labkit.runtime.cli import LabParser, usage_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"3.1": [os.path.join(ROOT, "main_exp_3_1.py")],
            "3.2": [os.path.join(ROOT, "main_exp_3_2.py")],
            "calibrate": ["-m", "labkit.runtime.calibrate"],
            "batch_grade": ["-m", "labkit.batch_grade"]}


def run(command, *args, cwd=ROOT, flags=()):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *flags, *COMMANDS[command], *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def assert_one_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len([x for x in lines if x.startswith("error:")]) == 1, r.stderr
    assert all(x.startswith(("error:", "  ", "warning:")) for x in lines if x.strip()), r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


@pytest.mark.parametrize("command,args,needles", [
    ("3.1", ["--top-k", "x"], ["--top-k", "whole number"]),
    ("3.1", ["--layers", "zz"], ["--layers", "'fast'"]),
    ("3.1", ["--image"], ["--image", "needs a value"]),
    ("3.1", ["--bogus"], ["--bogus", "spelling"]),
    ("3.1", ["--top-k", "0"], ["--top-k", "at least 1"]),
    ("3.1", ["--d"], ["--d", "in full"]),
    ("3.2", ["--runs", "1.5"], ["--runs", "whole number"]),
    ("3.2", ["--runs", "0"], ["--runs", "at least 1"]),
    ("3.2", ["extra"], ["extra"]),
    ("calibrate", ["--out"], ["--out", "needs a value"]),
    ("calibrate", ["--images"], ["--images", "needs a value"]),
    ("batch_grade", [], ["missing submissions"]),
    ("batch_grade", ["subs", "--out", "x.csv", "--jobs", "q"], ["--jobs", "whole number"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_command_line_is_one_error_line(command, args, needles):
    if command == "batch_grade" and not os.path.isdir(os.path.join(ROOT, "labkit", "staff")):
        pytest.skip("batch_grade is a staff tool: not in the student kit")
    assert_one_error(run(command, *args), *needles)


def test_help_still_prints_usage():
    r = run("3.1", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python main_exp_3_1.py")


def test_labparser_error_exits_2_with_one_line(capsys):
    p = LabParser(prog="prog")
    p.add_argument("--n", type=int, default=3)
    with pytest.raises(SystemExit) as err:
        p.parse_args(["--n", "three"])
    assert err.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith("error: --n")
    assert "usage" not in out.err and "prog --help" in out.err


@pytest.mark.parametrize("message,needle", [
    ("argument --x: invalid float value: 'a'", "not a number"),
    ("argument -s/--seed: invalid int value: 'a'", "--seed 'a': not a whole number"),
    ("argument --m: not allowed with argument --n", "only one"),
    ("the following arguments are required: submissions, --out", "missing submissions, --out"),
    ("something else", "something else (`p --help`"),
])
def test_usage_message(message, needle):
    assert needle in usage_message(message, "p")


# ------------------------------------------------------------- property: generated file kinds
# Each example runs exp 3.1 (or calibrate) in-process on a tiny network with --image,
# --weights and the output (--dump-pool5 / --out) drawn from the file kinds below. The rule:
# exit 0 with the promised output (a regular file, behind the link if it was one), or exit 2
# with exactly one `error:` line; never a traceback (it would fail the test), never a
# replaced non-regular file, never a file outside the output's folder.
import stat  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from labkit.runtime import cli  # noqa: E402

GOOD_INPUTS = ("ok", "link")
INPUT_KINDS = GOOD_INPUTS + ("missing", "empty", "truncated", "garbage", "folder", "fifo",
                             "device", "dangling")
GOOD_OUTPUTS = ("new", "existing", "link", "dangling", "new-folder")
OUTPUT_KINDS = GOOD_OUTPUTS + ("fifo", "device", "folder", "parent-is-file")


def make_device(path):
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))     # like /dev/full
    except OSError:
        os.mkfifo(path)                                             # no CAP_MKNOD: a FIFO


def make_input(folder, name, kind, good):
    path = os.path.join(folder, name)
    if kind == "ok":
        return good
    if kind == "link":
        os.symlink(good, path)
    elif kind == "dangling":
        os.symlink(os.path.join(folder, "gone"), path)
    elif kind == "empty":
        open(path, "wb").close()
    elif kind in ("truncated", "garbage"):
        with open(good, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[:len(data) // 3] if kind == "truncated" else b"\x00garbage" * 50)
    elif kind == "folder":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        make_device(path)
    return path


def make_output(folder, name, kind):
    path = os.path.join(folder, name)
    if kind == "existing":
        with open(path, "wb") as f:
            f.write(b"previous")
    elif kind == "link":
        os.mkdir(os.path.join(folder, "real"))
        os.symlink(os.path.join(folder, "real", name), path)
    elif kind == "dangling":
        os.symlink(os.path.join(folder, "made_" + name), path)
    elif kind == "new-folder":
        path = os.path.join(folder, "sub", "dir", name)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        make_device(path)
    elif kind == "folder":
        os.mkdir(path)
    elif kind == "parent-is-file":
        open(os.path.join(folder, "plain"), "wb").close()
        path = os.path.join(folder, "plain", name)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from labkit.runtime.fixtures import write_vgg19_mat
    from labkit.runtime.images import make_demo_image, save_rgb
    folder = tmp_path_factory.mktemp("tiny")
    weights = str(folder / "w.mat")
    write_vgg19_mat(weights, width_div=64, num_classes=3, fc_width=4, seed=1)
    image = str(folder / "img.png")
    save_rgb(make_demo_image(64, 64), image)
    return weights, image, str(tmp_path_factory.mktemp("examples"))


def run_in_process(main, argv, capsys):
    try:
        code = cli.run_main(lambda: main(argv))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


def check_outcome(code, out, expect_ok, target, kind, before):
    event(f"exit {code}")
    if expect_ok:
        assert code == 0, (kind, out.err)
        real = os.path.realpath(target)
        assert stat.S_ISREG(os.stat(real).st_mode)
        if kind in ("link", "dangling"):
            assert os.path.islink(target)
    else:
        assert code == 2, (code, out.err)
        lines = [x for x in out.err.splitlines() if x.strip()]
        assert len([x for x in lines if x.startswith("error:")]) == 1, out.err
        assert all(x.startswith(("error:", "  ", "warning:")) for x in lines), out.err
    if before is not None:          # a non-regular file is never replaced
        now = os.lstat(target)
        assert (stat.S_IFMT(now.st_mode), now.st_ino) == before


EXAMPLES = settings(derandomize=True, max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def kinds(good, every):
    """Half the draws a good kind, so that whole runs (exit 0) are among the examples."""
    return st.one_of(st.sampled_from(good), st.sampled_from(every))


@EXAMPLES
@given(kinds(GOOD_INPUTS, INPUT_KINDS), kinds(GOOD_INPUTS, INPUT_KINDS),
       kinds(GOOD_OUTPUTS, OUTPUT_KINDS), kinds(["1", "3"], ["0", "x"]))
@example("link", "ok", "link", "3").via("a run through links both ways")
def test_exp_3_1_file_kinds(tiny, capsys, monkeypatch, image_kind, weights_kind, out_kind,
                            top_k):
    import main_exp_3_1
    weights, image, base = tiny
    folder = tempfile.mkdtemp(dir=base)
    monkeypatch.chdir(folder)
    img = make_input(folder, "in.png", image_kind, image)
    wts = make_input(folder, "in.mat", weights_kind, weights)
    out = make_output(folder, "pool5.npy", out_kind)
    before = None
    if out_kind in ("fifo", "device", "folder"):
        st_ = os.lstat(out)
        before = (stat.S_IFMT(st_.st_mode), st_.st_ino)
    listing = set(os.listdir(folder))
    code, captured = run_in_process(main_exp_3_1.main, [
        "--image", img, "--weights", wts, "--dump-pool5", out, "--quiet", "--top-k", top_k],
        capsys)
    expect_ok = (image_kind in GOOD_INPUTS and weights_kind in GOOD_INPUTS
                 and out_kind in GOOD_OUTPUTS and top_k in ("1", "3"))
    check_outcome(code, captured, expect_ok, out, out_kind, before)
    if expect_ok:
        assert np.load(os.path.realpath(out)).shape[:2] == (1, 8)
    new = set(os.listdir(folder)) - listing - {"pool5.npy", "made_pool5.npy", "sub"}
    assert not new, new                      # nothing else, no temporary file left
    if out_kind == "existing" and not expect_ok:
        with open(out, "rb") as f:
            assert f.read() == b"previous"


@settings(derandomize=True, max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kinds(GOOD_INPUTS, INPUT_KINDS), kinds(GOOD_OUTPUTS, OUTPUT_KINDS))
def test_calibrate_file_kinds(tiny, capsys, monkeypatch, image_kind, out_kind):
    from labkit.runtime import calibrate
    weights, image, base = tiny
    folder = tempfile.mkdtemp(dir=base)
    monkeypatch.chdir(folder)
    img = make_input(folder, "in.png", image_kind, image)
    out = make_output(folder, "q.npz", out_kind)
    before = None
    if out_kind in ("fifo", "device", "folder"):
        st_ = os.lstat(out)
        before = (stat.S_IFMT(st_.st_mode), st_.st_ino)
    code, captured = run_in_process(calibrate.main, ["--weights", weights, "--images", img,
                                                     "--out", out], capsys)
    expect_ok = image_kind in GOOD_INPUTS and out_kind in GOOD_OUTPUTS
    check_outcome(code, captured, expect_ok, out, out_kind, before)
    if expect_ok:
        with np.load(os.path.realpath(out)) as data:
            assert set(data.files) == {"input", "filter"}
        assert stat.S_IMODE(os.stat(os.path.realpath(out)).st_mode) & 0o044   # not 0600


# ----------------------------------------------------------------------- the environment
NOBODY = 65534


def as_nobody(args, cwd):
    """Run ``python args`` as uid/gid 65534 (root reads any file, so permission errors
    need another user); skips where that cannot run here."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    probe = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                            "--clear-groups", sys.executable, "-c", "import labkit, numpy"],
                           capture_output=True, env=env, cwd=cwd)
    if probe.returncode != 0 or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run the command as another user (root itself "
                    "bypasses file permissions)")
    return subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                           "--clear-groups", sys.executable, *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture
def open_folder(tiny):
    """A folder anyone can enter, holding copies of the tiny network and image."""
    folder = tempfile.mkdtemp(prefix="edges_perm_")
    os.chmod(folder, 0o755)
    weights, image, _ = tiny
    for src in (weights, image):
        with open(src, "rb") as f, open(os.path.join(folder, os.path.basename(src)), "wb") as g:
            g.write(f.read())
    yield folder
    subprocess.run(["rm", "-rf", folder])


@pytest.mark.parametrize("command,unreadable,flag", [
    ("3.1", "w.mat", "--weights"), ("3.1", "img.png", "--image"),
    ("calibrate", "w.mat", "--weights")])
def test_unreadable_file_is_a_permission_message(open_folder, command, unreadable, flag):
    os.chmod(os.path.join(open_folder, unreadable), 0o000)
    args = {"3.1": ["--dump-pool5", "p.npy"], "calibrate": ["--out", "q.npz"]}[command]
    sub = os.path.join(open_folder, "out")
    os.mkdir(sub)
    os.chmod(sub, 0o777)
    r = as_nobody([*COMMANDS[command], "--weights", os.path.join(open_folder, "w.mat"),
                   "--image" if command == "3.1" else "--images",
                   os.path.join(open_folder, "img.png"), *args], cwd=sub)
    assert_one_error(r, "permission denied", unreadable)
    assert "damaged" not in r.stderr and "corrupt" not in r.stderr


def test_closed_pipe_is_quiet_and_the_run_finishes(tiny, tmp_path):
    """`... | head -1`: the reader goes away after one line; no BrokenPipeError, exit 0."""
    weights, image, _ = tiny
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, COMMANDS["3.1"][0], "--weights", weights,
                             "--image", image, "--dump-pool5", str(tmp_path / "p.npy")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env=env)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
    assert os.path.isfile(tmp_path / "p.npy")        # the run went on to write its output


def test_python_isolated_mode_finds_the_kit(tmp_path):
    for script in ("main_exp_3_1.py", "main_exp_3_2.py", "main_exp_3_3.py"):
        r = subprocess.run([sys.executable, "-I", os.path.join(ROOT, script), "--help"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, (script, r.stderr[-500:])


def test_every_driver_resolves_output_the_same_way(tmp_path, monkeypatch):
    from labkit.runtime.transfer_options import build_parser
    monkeypatch.chdir(tmp_path)                  # no ./output here: the repository's
    assert build_parser().get_default("output_dir") == os.path.join(cli.REPO_ROOT, "output")
    assert cli.default_output_dir() == os.path.join(cli.REPO_ROOT, "output")
    (tmp_path / "output").mkdir()                # a ./output here: that one
    assert build_parser().get_default("output_dir") == "output" == cli.default_output_dir()


def test_exp_3_3_redirected_log_has_no_carriage_returns(tiny, tmp_path):
    """No --no-progress, output to files: no progress bar (no \\r); the header is a line."""
    weights, image, _ = tiny
    env = dict(os.environ, PYTHONPATH=ROOT)
    with open(tmp_path / "log.txt", "w") as log:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "main_exp_3_3.py"),
                            "--weights", weights, "--content", image, "--style", image,
                            "--conv", "lab", "--skip-speed-test", "--height", "32", "--width",
                            "32", "--steps", "2", "--output-dir", str(tmp_path / "o")],
                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                           timeout=300)
    text = (tmp_path / "log.txt").read_text()
    assert r.returncode == 0, text
    assert "\r" not in text and any(line.startswith("Run ") for line in text.splitlines())


def test_exp_3_3_full_disk_keeps_the_last_checkpoint(tiny, tmp_path):
    """The output folder on a 96 KiB tmpfs: a checkpoint (about 55 KB) fits once, its
    replacement does not. One message, exit 2, the checkpoint on disk whole, no temporary
    file left. Without mount (not root): a 30 KB file-size limit, the one-message rule."""
    weights, image, _ = tiny
    out = tmp_path / "o"
    out.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(out)],
        capture_output=True).returncode == 0
    import resource

    def limit():
        if not mounted:
            resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, resource.RLIM_INFINITY))
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "main_exp_3_3.py"),
                            "--weights", weights, "--content", image, "--style", image,
                            "--conv", "lab", "--skip-speed-test", "--no-progress", "--height",
                            "32", "--width", "48", "--steps", "6", "--save-every", "1",
                            "--output-dir", str(out)], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300, preexec_fn=limit)
        assert_one_error(r, "writing")
        assert "no space" in r.stderr or "larger than allowed" in r.stderr, r.stderr
        assert not [n for n in os.listdir(out) if ".tmp-" in n]
        if mounted:
            from labkit.runtime.checkpoint import load_checkpoint
            (ck,) = [n for n in os.listdir(out) if n.endswith("_checkpoint.npz")]
            assert load_checkpoint(str(out / ck))["step"] >= 1
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(out)], capture_output=True)
