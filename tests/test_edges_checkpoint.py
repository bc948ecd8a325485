"""Issue 21, --resume trusts nothing: a checkpoint is validated completely before anything
is loaded (labkit.runtime.checkpoint.load_checkpoint with the driver's parser), an edited or
foreign one is ONE CheckpointError naming the problem, the log is optional and read
tolerantly, and a run that diverges on its last step never exits 0 with a non-finite image
or checkpoint. One real run makes the checkpoint; the edits are checked in-process, a few
end to end."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from labkit.runtime.checkpoint import CheckpointError, load_checkpoint
from labkit.runtime.runlog import make_run_id, read_log
from labkit.runtime.transfer_options import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "main_exp_3_3.py")
QUICK = ["--demo", "--no-progress", "--conv", "lab", "--skip-speed-test", "--height", "32",
         "--width", "48"]


def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, DRIVER, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def one_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-800:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A stopped run: 2 of 4 steps done (its checkpoint at step 2), with its log."""
    folder = tmp_path_factory.mktemp("ckpt")
    proc = run_cli(*QUICK, "--steps", "2", "--save-every", "1", "--output-dir",
                   str(folder / "out"), cwd=folder)
    assert proc.returncode == 0, proc.stderr
    (ck,) = glob.glob(str(folder / "out" / "*_checkpoint.npz"))
    with np.load(ck) as data:
        fields = {k: data[k] for k in data.files}
    return folder, ck, fields


def edited(tmp_path, fields, **changes):
    """A copy of the checkpoint with fields replaced (None: removed)."""
    out = dict(fields)
    for key, value in changes.items():
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    path = str(tmp_path / "x_checkpoint.npz")
    with open(path, "wb") as f:
        np.savez(f, **out)
    return path


def settings_with(fields, **changes):
    settings = json.loads(str(fields["settings"]))
    for key, value in changes.items():
        if value is None:
            settings.pop(key)
        else:
            settings[key] = value
    return np.array(json.dumps(settings))


def test_the_real_checkpoint_passes(made):
    _, ck, _ = made
    data = load_checkpoint(ck, parser=build_parser())
    assert data["step"] == 2 and data["optimizer_state"]["mt"].shape == data["image"].shape


def nonfinite(image):
    image = image.copy()
    image.flat[3] = np.nan
    return image


EDITS = {
    "no version": (lambda f: {"version": None}, "lacks version"),
    "version 2": (lambda f: {"version": np.array(2)}, "version 2"),
    "text step": (lambda f: {"step": np.array("two")}, "'step'"),
    "negative step": (lambda f: {"step": np.array(-3)}, "negative step"),
    "image NaN": (lambda f: {"image": nonfinite(f["image"])}, "NaN or infinite"),
    "image 3-d": (lambda f: {"image": f["image"][0]}, "(1, 3, H, W)"),
    "image ints": (lambda f: {"image": f["image"].astype(np.int32)}, "not float32"),
    "adam other shape": (lambda f: {"adam_mt": f["adam_mt"][:, :, :-1]}, "adam_mt"),
    "adam half": (lambda f: {"adam_vt": None}, "only part of Adam"),
    "adam negative vt": (lambda f: {"adam_vt": -np.abs(f["adam_vt"]) - 1}, "negative"),
    "adam inf": (lambda f: {"adam_mt": f["adam_mt"] * np.inf}, "NaN or infinite"),
    "settings not JSON": (lambda f: {"settings": np.array("{oops")}, "not JSON"),
    "settings a list": (lambda f: {"settings": np.array("[1, 2]")}, "table of options"),
    "no run id": (lambda f: {"settings": settings_with(f, run_id=None)}, "run_id"),
    "run id a path": (lambda f: {"settings": settings_with(f, run_id="../x")}, "run id"),
    "no style": (lambda f: {"settings": settings_with(f, style=None)}, "style"),
    "steps text": (lambda f: {"settings": settings_with(f, steps="ten")}, "--steps"),
    "steps float": (lambda f: {"settings": settings_with(f, steps=4.5)}, "whole number"),
    "style a string": (lambda f: {"settings": settings_with(f, style="s.png")}, "--style"),
    "lr text": (lambda f: {"settings": settings_with(f, lr="fast")}, "--lr"),
    "optimizer unknown": (lambda f: {"settings": settings_with(f, optimizer="sgd")},
                          "--optimizer"),
    "blend inf": (lambda f: {"settings": settings_with(f, style_blend=[1e999])},
                  "--style-blend"),
    "flag not bool": (lambda f: {"settings": settings_with(f, demo="yes")}, "--demo"),
    "other generator": (lambda f: {"rng_state": np.array(json.dumps(
        {"bit_generator": "MT19937", "state": {"key": [1, 2], "pos": 0}}))}, "MT19937"),
    "generator damaged": (lambda f: {"rng_state": np.array('{"bit_generator": "PCG64"}')},
                          "PCG64"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_an_edited_checkpoint_is_one_error(made, tmp_path, case):
    _, _, fields = made
    change, words = EDITS[case]
    path = edited(tmp_path, fields, **change(fields))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, parser=build_parser())
    text = str(err.value)
    assert text.startswith("--resume: checkpoint ") and path in text and "\n" not in text
    assert words in text, (words, text)


@pytest.mark.parametrize("kind", ["empty", "truncated", "npy", "text", "folder", "fifo"])
def test_a_checkpoint_file_that_is_not_one(made, tmp_path, kind):
    _, ck, _ = made
    path = str(tmp_path / "y_checkpoint.npz")
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "truncated":
        with open(ck, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif kind == "text":
        with open(path, "w") as f:
            f.write("step,total\n1,2\n")
    elif kind == "folder":
        os.mkdir(path)
    else:
        os.mkfifo(path)
    words = {"empty": "empty", "folder": "folder", "fifo": "FIFO", "npy": ".npy"}
    with pytest.raises(CheckpointError, match=words.get(kind, "truncated, damaged")):
        load_checkpoint(path, parser=build_parser())


def test_resume_of_an_edited_checkpoint_end_to_end(made, tmp_path):
    folder, _, fields = made
    path = edited(tmp_path, fields, adam_vt=fields["adam_vt"][:, :1])
    one_error(run_cli("--resume", path, "--steps", "4", cwd=folder), "--resume", "adam_vt")


def test_resume_checks_the_image_size_against_the_settings(made, tmp_path):
    folder, _, fields = made
    small = np.zeros((1, 3, 16, 16), np.float32)
    path = edited(tmp_path, fields, image=small, adam_mt=small, adam_vt=small)
    one_error(run_cli("--resume", path, "--steps", "4", cwd=folder), "16x16", "32x48")


def test_resume_without_its_log(made, tmp_path):
    """A checkpoint copied alone resumes (a warning, a new log); the run finishes."""
    folder, ck, _ = made
    alone = tmp_path / "alone"
    alone.mkdir()
    copy = alone / os.path.basename(ck)
    copy.write_bytes(open(ck, "rb").read())
    proc = run_cli("--resume", str(copy), "--steps", "3", "--skip-speed-test", "--no-progress",
                   cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stderr and "_log.csv" in proc.stderr and "Traceback" not in proc.stderr
    assert [r["step"] for r in read_log(str(copy).replace("_checkpoint.npz", "_log.csv"))] == [3]


def test_resume_with_a_spreadsheet_log(made, tmp_path):
    """A log re-saved by a spreadsheet (BOM, ';', decimal commas, a stray line) is read."""
    folder, ck, _ = made
    run = tmp_path / "sheet"
    run.mkdir()
    copy = run / os.path.basename(ck)
    copy.write_bytes(open(ck, "rb").read())
    log = str(copy).replace("_checkpoint.npz", "_log.csv")
    with open(ck.replace("_checkpoint.npz", "_log.csv")) as f:
        rows = f.read().splitlines()
    text = "\ufeff" + "\r\n".join([rows[0].replace(",", ";")]
                                  + [r.replace(",", ";").replace(".", ",") for r in rows[1:]]
                                  + ["exported by a spreadsheet;;;"]) + "\r\n"
    with open(log, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    assert [r["step"] for r in read_log(log)] == [1, 2]
    proc = run_cli("--resume", str(copy), "--steps", "3", "--skip-speed-test", "--no-progress",
                   cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert [r["step"] for r in read_log(log)] == [1, 2, 3]


def test_last_step_divergence_is_not_exit_0(tmp_path):
    """--lr 1e308 --steps 1: the single update overflows; the run ends with exit 1, the
    image before it and a finite checkpoint, which resumes without a crash."""
    out = tmp_path / "out"
    proc = run_cli(*QUICK, "--steps", "1", "--lr", "1e308", "--output-dir", str(out),
                   cwd=tmp_path)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "after the last step" in proc.stderr and "Traceback" not in proc.stderr
    assert "RuntimeWarning" not in proc.stderr
    names = os.listdir(out)
    assert not [n for n in names if "_final" in n], names
    (ck,) = glob.glob(str(out / "*_checkpoint.npz"))
    data = load_checkpoint(ck, parser=build_parser())
    assert data["step"] == 0 and np.all(np.isfinite(data["image"]))


def test_run_ids_are_claimed_atomically(tmp_path):
    """Same second, same seed, same folder: every caller gets its own id (O_EXCL)."""
    now = 1_700_000_000
    ids = [make_run_id(str(tmp_path), 1234, now=now) for _ in range(3)]
    assert len(set(ids)) == 3 and ids[1].endswith("_2") and ids[2].endswith("_3")
    code = ("import sys; from labkit.runtime.runlog import make_run_id; "
            f"print(make_run_id(sys.argv[1], 7, now={now}))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    got = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert len(set(got)) == 4 and all(g.startswith(ids[0][:15]) for g in got), got


def test_run_id_claim_is_what_makes_it_unique(tmp_path, monkeypatch):
    """Negative control: a second run that looked at the folder before the first claimed
    its id (listdir sees nothing) still gets another id, because of the O_EXCL claim."""
    first = make_run_id(str(tmp_path), 1, now=0)
    monkeypatch.setattr(os, "listdir", lambda folder: [])
    assert make_run_id(str(tmp_path), 1, now=0) == first + "_2"
