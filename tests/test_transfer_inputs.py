"""main_exp_3_3.py as a user runs it (subprocesses): every bad input is refused with exit 2
and one message before the speed test and the weights load; SIGTERM saves and resumes
exactly; a diverging run keeps only finite images; --demo runs with every new flag."""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from labkit.runtime import nofollow
from labkit.runtime.checkpoint import load_checkpoint
from labkit.runtime.images import make_demo_image, save_rgb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "main_exp_3_3.py")
QUICK = ["--demo", "--no-progress", "--conv", "lab", "--height", "32", "--width", "48",
         "--steps", "4", "--save-every", "2"]


def run_cli(*args, cwd, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, DRIVER, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300, **kw)


def assert_refused(proc, *words):
    """exit 2, one 'error:' line naming the problem, nothing started."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in proc.stderr
    assert "Speed test" not in proc.stdout and "Loading" not in proc.stdout
    assert "DEMO" not in proc.stdout            # not even the demo files were made


@pytest.mark.parametrize("flags,words", [
    (["--height", "8", "--width", "8"], ["8x8", "at least 16"]),
    (["--lr", "0"], ["--lr"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "-1"], ["--lr"]),
    (["--tv-weight", "-1"], ["--tv-weight"]),
    (["--seed", "-1"], ["--seed"]),
    (["--beta", "inf"], ["--beta"]),
    (["--style-scale", "0"], ["--style-scale"]),
    (["--style-scale", "0.2"], ["--style-scale", "at least 16"]),
    (["--scales", "8,64"], ["--scales", "at least 16"]),
    (["--scales", "a,b"], ["--scales"]),
    (["--scales", "32,48,64", "--steps", "2"], ["--steps 2", "3 scales"]),
    (["--style-blend", "0.5", "0.5"], ["--style-blend", "2 weights for 1"]),
    (["--style-blend", "-1"], ["--style-blend"]),
    (["--preserve-colors", "rgb"], ["--preserve-colors"]),
    (["--pooling", "min"], ["--pooling"]),
    (["--height", "100000", "--width", "100000"], ["GiB", "MemAvailable", "--force-memory"]),
    (["--resume", "no/such_run"], ["--resume", "checkpoint"]),
])
def test_bad_numbers_and_flags_are_refused_first(tmp_path, flags, words):
    start = time.perf_counter()
    proc = run_cli(*QUICK, "--output-dir", str(tmp_path / "out"), *flags, cwd=tmp_path)
    assert_refused(proc, *words)
    assert not (tmp_path / "out").exists()             # nothing partial left
    if "100000" in flags:
        assert time.perf_counter() - start < 30         # refused at once, nothing allocated


def test_bad_output_folders(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for folder, word in ((str(a_file), "is a file"), ("/proc/x/y", "cannot be created"),
                         (str(a_file / "sub"), "cannot be created")):
        assert_refused(run_cli(*QUICK, "--output-dir", folder, cwd=tmp_path), word)


def test_bad_images_and_weights_before_any_work(tmp_path):
    img = str(tmp_path / "c.png")
    save_rgb(make_demo_image(40, 40), img)
    base = ["--no-progress", "--output-dir", str(tmp_path / "out")]
    proc = run_cli(*base, "--content", "nope.jpg", "--style", img, cwd=tmp_path)
    assert_refused(proc, "image not found: nope.jpg")
    proc = run_cli(*base, "--content", img, "--style", img, str(tmp_path / "x.png"),
                   cwd=tmp_path)
    assert_refused(proc, "x.png")
    (tmp_path / "bad.jpg").write_text("not an image")
    proc = run_cli(*base, "--content", img, "--style", str(tmp_path / "bad.jpg"), cwd=tmp_path)
    assert_refused(proc, "bad.jpg")
    proc = run_cli(*base, "--content", img, "--style", img, "--weights",
                   str(tmp_path / "missing.mat"), cwd=tmp_path)
    assert proc.returncode == 2 and "VGG19 weights not found" in proc.stderr
    assert "Traceback" not in proc.stderr and "Speed test" not in proc.stdout
    assert not (tmp_path / "out").exists()


def test_divergence_message_and_no_nonfinite_image(tmp_path):
    out = tmp_path / "out"
    proc = run_cli(*QUICK, "--skip-speed-test", "--output-dir", str(out), "--lr", "1e25",
                   "--steps", "6", "--save-every", "1", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "the loss went from" in proc.stderr and " to inf at step 2" in proc.stderr
    names = sorted(os.listdir(out))
    assert any("_lastgood_step0000.jpg" in n for n in names), names
    assert not any("_step0001.jpg" in n or "_final" in n or ".tmp" in n for n in names)
    (ck,) = glob.glob(str(out / "*_checkpoint.npz"))
    data = load_checkpoint(ck)
    assert data["step"] == 0 and np.all(np.isfinite(data["image"]))


def private_copy(anchor, rel):
    """A copy, in a folder of this process's own, of ``anchor/rel`` read without following
    a link (for readers that take a path)."""
    import tempfile
    path = os.path.join(tempfile.mkdtemp(), os.path.basename(rel))
    with open(path, "wb") as f:
        f.write(nofollow.read_bytes(anchor, rel))
    return path


def test_sigterm_saves_and_resume_is_exact(tmp_path):
    """A real SIGTERM: exit 143 with the image, log and checkpoint saved; --resume then ends
    on the same float64 image, bitwise, as the same run done in one go."""
    args = ["--demo", "--no-progress", "--conv", "lab", "--skip-speed-test", "--height", "64",
            "--width", "96", "--dtype", "float64", "--steps", "12", "--save-every", "2"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    out_b = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, DRIVER, *args, "--output-dir", str(out_b)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env)
    deadline = time.time() + 120
    while not glob.glob(str(out_b / "*_step0002.jpg")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, stdout, stderr)
    assert "Traceback" not in stderr and "SIGTERM" in stderr
    (interrupted,) = glob.glob(str(out_b / "*_interrupted_step*.jpg"))
    k = int(interrupted[-8:-4])
    assert 2 <= k < 12
    (ck,) = glob.glob(str(out_b / "*_checkpoint.npz"))
    assert load_checkpoint(ck)["step"] == k
    assert not [n for n in os.listdir(out_b) if ".tmp" in n]
    resumed = run_cli("--resume", ck, "--no-progress", "--skip-speed-test", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {k}" in resumed.stdout
    one_go = run_cli(*args, "--output-dir", str(tmp_path / "a"), cwd=tmp_path)
    assert one_go.returncode == 0, one_go.stderr
    # the drivers ran the student's code in tmp_path: read what they left without links
    a = load_checkpoint(private_copy(tmp_path, nofollow.glob(tmp_path, "a/*_checkpoint.npz")[0]))
    b = load_checkpoint(private_copy(tmp_path, "b/" + os.path.basename(ck)))
    assert a["step"] == b["step"] == 12
    assert np.array_equal(a["image"], b["image"])
    with nofollow.open(tmp_path, nofollow.glob(tmp_path, "b/*_log.csv")[0], "r") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == \
            [str(i) for i in range(1, 13)]


def test_resume_refuses_changed_settings(tmp_path):
    out = tmp_path / "out"
    assert run_cli(*QUICK, "--skip-speed-test", "--output-dir", str(out), cwd=tmp_path
                   ).returncode == 0
    (ck,) = glob.glob(str(out / "*_checkpoint.npz"))
    proc = run_cli("--resume", ck, "--lr", "2", cwd=tmp_path)
    assert_refused(proc, "--lr", "saved settings")
    proc = run_cli("--resume", ck, "--skip-speed-test", cwd=tmp_path)
    assert_refused(proc, "already done 4", "--steps")
    proc = run_cli("--resume", ck[:-len("_checkpoint.npz")], "--steps", "6",
                   "--skip-speed-test", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0 and "resumed at step 4" in proc.stdout


NEW_FLAGS = {
    "styles": ["--style", "{s1}", "{s2}"],
    "blend": ["--style", "{s1}", "{s2}", "--style-blend", "0.7", "0.3"],
    "style_scale": ["--style-scale", "1.5"],
    "pooling": ["--pooling", "avg"],
    "scales": ["--scales", "32,48"],
    "luminance": ["--preserve-colors"],
    "histogram": ["--preserve-colors", "histogram"],
    "force_memory": ["--force-memory"],
}


def test_demo_runs_with_every_new_flag_singly(tmp_path):
    import main_exp_3_3 as drv
    s1, s2 = str(tmp_path / "s1.png"), str(tmp_path / "s2.png")
    save_rgb(make_demo_image(40, 60, seed=3), s1)
    save_rgb(make_demo_image(50, 50, seed=4), s2)
    for name, flags in NEW_FLAGS.items():
        out = tmp_path / name
        flags = [f.format(s1=s1, s2=s2) for f in flags]
        assert drv.main(QUICK + ["--skip-speed-test", "--output-dir", str(out)] + flags) == 0
        for pattern in ("*_final.jpg", "*_sheet.png", "*_checkpoint.npz", "*_log.csv"):
            assert len(glob.glob(str(out / pattern))) == 1, (name, pattern)


def test_demo_runs_with_all_new_flags_together(tmp_path):
    s1, s2 = str(tmp_path / "s1.png"), str(tmp_path / "s2.png")
    save_rgb(make_demo_image(40, 60, seed=3), s1)
    save_rgb(make_demo_image(50, 50, seed=4), s2)
    out = tmp_path / "out"
    proc = run_cli(*QUICK, "--skip-speed-test", "--output-dir", str(out), "--steps", "6",
                   "--style", s1, s2, "--style-blend", "0.7", "0.3", "--style-scale", "1.25",
                   "--pooling", "avg", "--scales", "32,48", "--preserve-colors", "histogram",
                   "--force-memory", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "21x32 -> 32x48" in proc.stdout and "Traceback" not in proc.stderr
    from labkit.runtime.images import load_rgb
    (final,) = glob.glob(str(out / "*_final.jpg"))
    assert load_rgb(final).shape == (32, 48, 3)
    (sheet,) = glob.glob(str(out / "*_sheet.png"))
    assert load_rgb(sheet).shape[1] > 5 * 48        # content, 2 styles, 2 steps, final
    assert len(glob.glob(str(out / "*_step*.jpg"))) == 2
