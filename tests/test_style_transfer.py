"""stu_upload/style_transfer.py, labkit/runtime/transfer.py, labkit/runtime/runlog.py and main_exp_3_3.py
on a small fixture VGG19 (channel widths / 32) and small images."""
import argparse
import csv
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from labkit.runtime.gradcheck import assert_close, check_vjp
from labkit.runtime.images import load_rgb, make_demo_image, preprocess, save_rgb
from labkit.runtime.runlog import preserve_colors
from labkit.runtime.transfer import Objective, run_transfer, tv_loss
from labkit.runtime import vgg19_spec as spec
from labkit.runtime.student import seed_numpy, stu

FEATURE_LAYER_NAMES = spec.FEATURE_LAYER_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STYLE = {"relu1_1": 1, "relu2_1": 1, "relu3_1": 1, "relu4_1": 1, "relu5_1": 1}


def VGG19(*args, **kwargs):
    return stu.style_transfer.VGG19(*args, **kwargs)


def get_random_img(*args, **kwargs):
    return stu.style_transfer.get_random_img(*args, **kwargs)


def build(path, dtype=np.float64, last_layer="pool5"):
    vgg = VGG19(path, dtype=dtype)
    vgg.build_model(last_layer=last_layer)
    vgg.init_model()
    vgg.load_model()
    return vgg


def images(vgg, h=32, w=48):
    mean = vgg.mean_pixel
    content = preprocess(make_demo_image(h, w, seed=0), mean, h, w, vgg.dtype)
    style = preprocess(make_demo_image(h, w, seed=7)[:, ::-1], mean, h, w, vgg.dtype)
    return content, style


def test_forward_returns_requested_layers(tiny_mat):
    vgg = build(tiny_mat)
    content, _ = images(vgg)
    out = vgg.forward(content, ["relu1_1", "relu4_2", "relu5_1"])
    assert set(out) == {"relu1_1", "relu4_2", "relu5_1"}
    assert out["relu1_1"].shape == (1, 2, 32, 48)
    assert out["relu4_2"].shape == (1, 16, 4, 6)
    assert out["relu5_1"].shape == (1, 16, 2, 3)
    assert out["relu4_2"].dtype == np.float64 and np.all(out["relu4_2"] >= 0)
    assert len(vgg.param_layer_name) == 37 and vgg.param_layer_name[-1] == "pool5"


def test_built_only_as_deep_as_needed(tiny_mat):
    vgg = build(tiny_mat, last_layer="relu3_1")
    assert vgg.param_layer_name == FEATURE_LAYER_NAMES[:FEATURE_LAYER_NAMES.index("relu3_1") + 1]
    assert "conv3_2" not in vgg.layers and list(vgg.layers)[-1] == "relu3_1"
    conv = vgg.layers["conv2_1"]
    assert conv.type == 1 and conv.need_param_grad is False
    content, _ = images(vgg)
    with pytest.raises(ValueError, match="last_layer"):
        vgg.forward(content, ["relu4_2"])
    vgg.forward(content, ["relu1_1"])
    with pytest.raises(RuntimeError, match="layer_list"):
        vgg.backward(np.zeros((1, 8, 8, 12)), "relu3_1")     # forward stopped at relu1_1


def test_single_pass_backward_equals_sum_of_passes(tiny_mat, rng):
    vgg = build(tiny_mat)
    content, _ = images(vgg)
    names = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    out = vgg.forward(content, names)
    dlosses = {n: rng.standard_normal(out[n].shape) for n in names}
    one_pass = vgg.backward(dlosses)
    summed = sum(vgg.backward(dlosses[n], n) for n in names)
    assert one_pass.shape == content.shape
    assert_close("single-pass backward", one_pass, summed, threshold=1e-10)


def test_network_backward_numeric(tiny_mat, rng):
    vgg = build(tiny_mat, last_layer="relu2_1")
    x = images(vgg, 8, 8)[0] / 50.0
    check_vjp("VGG19 image gradient", lambda v: vgg.forward(v, ["relu2_1"])["relu2_1"],
              lambda dy: vgg.backward(dy, "relu2_1"), x, threshold=1e-6)


def test_total_loss_image_gradient_numeric(tiny_mat):
    vgg = build(tiny_mat)
    content, style = images(vgg, 16, 16)
    obj = Objective(vgg, content, style, "relu4_2", STYLE, alpha=1, beta=500, tv_weight=2.0)
    image = get_random_img(content, 0.5, np.random.default_rng(0))
    total, grad, parts = obj(image)
    assert total == pytest.approx(parts["content"] + 500 * parts["style"] + 2 * parts["tv"])
    eps = 1e-4
    moved = []
    for idx in [(0, 0, 3, 5), (0, 1, 10, 2), (0, 2, 15, 15), (0, 0, 8, 8)]:
        plus, minus = image.copy(), image.copy()
        plus[idx] += eps
        minus[idx] -= eps
        (total_plus, _, parts_plus), (total_minus, _, parts_minus) = obj(plus), obj(minus)
        moved.append((parts_plus["content"], parts_plus["style"]) !=
                     (parts_minus["content"], parts_minus["style"]))
        numeric = (total_plus - total_minus) / (2 * eps)
        assert grad[idx] == pytest.approx(numeric, rel=1e-5, abs=1e-9 * abs(total))
    # the network's losses move at some probe: a forward that answers probes from a cache
    # of recent inputs keeps them flat, and then an empty network backward would pass
    assert any(moved), "content and style losses ignored every probe"


def test_tv_loss_gradient(rng):
    x = rng.standard_normal((1, 3, 4, 5))
    check_vjp("tv", lambda v: np.array(tv_loss(v)[0]), lambda dy: tv_loss(x)[1] * dy, x,
              dy=np.array(1.3))


@pytest.mark.parametrize("optimizer,ratio", [("adam", 0.5), ("lbfgs", 0.05)])
def test_short_runs_lower_the_loss(tiny_mat, optimizer, ratio):
    """Original settings (Adam lr 1, 0.5 noise start), 20 steps: Adam reaches ~24 % of the
    start loss, L-BFGS ~0.2 % (measured on this fixture); asserted: < 50 % and < 5 %."""
    vgg = build(tiny_mat, dtype=np.float32, last_layer="relu5_1")
    content, style = images(vgg)
    obj = Objective(vgg, content, style, "relu4_2", STYLE)
    start = get_random_img(content, 0.5, np.random.default_rng(1234))
    low = -vgg.mean_pixel
    result = run_transfer(obj, start, 20, optimizer, 1.0, bounds=(low, low + 255))
    assert result.status == "done" and result.steps == 20
    first = obj(start)[0]
    last = obj(result.image)[0]
    assert last < ratio * first, (first, last)


def test_nonfinite_loss_keeps_last_good_image(tiny_mat):
    vgg = build(tiny_mat, dtype=np.float32, last_layer="relu3_1")
    content, style = images(vgg)
    obj = Objective(vgg, content, style, "relu3_1", {"relu1_1": 1})
    seen = []

    def broken(image):
        seen.append(image.copy())
        total, grad, parts = obj(image)
        return (float("nan") if len(seen) == 4 else total), grad, parts

    result = run_transfer(broken, content.copy(), 10, "adam", 1.0)
    assert result.status == "nonfinite" and result.steps == 3 and result.image_step == 2
    assert np.array_equal(result.image, seen[2]) and "finite" in result.message


def driver_args(out, **kw):
    from labkit.runtime.transfer_options import parse_args
    args = parse_args(["--output-dir", str(out), "--no-progress", "--save-every", "2"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_ctrl_c_saves_image_and_log(tiny_mat, tmp_path):
    from labkit.runtime.transfer_run import run_and_save
    vgg = build(tiny_mat, dtype=np.float32, last_layer="relu3_1")
    content, style = images(vgg)
    obj = Objective(vgg, content, style, "relu3_1", {"relu1_1": 1, "relu2_1": 1})

    def hook(step, image, record):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_and_save(driver_args(tmp_path, steps=10), vgg, obj, content.copy(),
                         make_demo_image(32, 48), hook=hook)
    assert len(glob.glob(str(tmp_path / "*_interrupted_step0003.jpg"))) == 1
    assert len(glob.glob(str(tmp_path / "*_step0002.jpg"))) == 1
    with open(glob.glob(str(tmp_path / "*_log.csv"))[0]) as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) >= {"total", "content", "style_relu1_1", "style_relu2_1", "tv",
                            "seconds"}
    assert glob.glob(str(tmp_path / "*_loss.png"))


def test_save_load_round_trip(tiny_mat, tmp_path):
    vgg = build(tiny_mat, last_layer="relu1_1")
    image = get_random_img(images(vgg)[0], 0.5, np.random.default_rng(0))
    path = str(tmp_path / "x.png")
    rgb = vgg.save_image(image, (1, 3, 32, 48), path)
    back, shape = vgg.load_image(path, 32, 48)
    assert shape == (32, 48, 3)
    expected = np.clip(np.round(image[0].transpose(1, 2, 0) + vgg.mean_pixel), 0, 255)
    assert np.array_equal(rgb, expected.astype(np.uint8))
    assert np.allclose(back, expected.transpose(2, 0, 1)[None] - vgg.mean_pixel.reshape(1, 3, 1, 1))


def test_load_image_and_save_image_follow_the_original_protocol(tiny_mat, tmp_path):
    """load_image -> (image, original_shape); save_image(image, original_shape, path)
    resizes back to the picture's size (the original kit's driver writes its output so)."""
    vgg = build(tiny_mat, last_layer="relu1_1")
    src = str(tmp_path / "src.png")
    save_rgb(make_demo_image(30, 50, seed=2), src)
    image, shape = vgg.load_image(src, 24, 40)
    assert image.shape == (1, 3, 24, 40) and tuple(shape) == (30, 50, 3)
    out = str(tmp_path / "out.png")
    rgb = vgg.save_image(image, shape, out)
    assert rgb.shape == (30, 50, 3) and load_rgb(out).shape == (30, 50, 3)
    # the round trip through 24x40 is close to the source picture (bilinear both ways)
    assert np.abs(rgb.astype(float) - make_demo_image(30, 50, seed=2)).mean() < 20


def test_get_random_img_uses_numpys_global_generator(tiny_mat):
    """np.random.seed(1234) reproduces the start image, as the original driver relies on."""
    content = np.zeros((1, 3, 8, 10))
    seed_numpy(1234)        # here and, graded in the sandbox, in the student's process
    a = get_random_img(content, 0.5)
    seed_numpy(1234)
    b = get_random_img(content, 0.5)
    c = get_random_img(content, 0.5)
    assert np.array_equal(a, b) and not np.array_equal(b, c)
    np.random.seed(1234)
    assert np.allclose(a, 0.5 * np.random.uniform(-20, 20, content.shape))


def test_preserve_colors_keeps_content_chroma():
    from PIL import Image
    content, output = make_demo_image(24, 32, seed=0), make_demo_image(24, 32, seed=5)
    mixed = preserve_colors(content, output)
    ycc = lambda a: np.asarray(Image.fromarray(a).convert("YCbCr"), dtype=int)
    # equal up to rounding and RGB gamut clipping (saturated red disc)
    assert np.abs(ycc(mixed)[..., 0] - ycc(output)[..., 0]).mean() < 4
    assert np.abs(ycc(mixed)[..., 1:] - ycc(content)[..., 1:]).mean() < 4
    assert np.abs(ycc(output)[..., 1:] - ycc(content)[..., 1:]).mean() > 20   # control


def test_parse_style_layers():
    from labkit.runtime.cli import UserError
    from labkit.runtime.transfer_options import parse_style_layers
    assert parse_style_layers("relu1_1:1,relu2_1:0.5,relu3_1") == \
        {"relu1_1": 1.0, "relu2_1": 0.5, "relu3_1": 1.0}
    with pytest.raises(UserError, match="unknown layer"):
        parse_style_layers("relu9_1")


def run_cli(*argv, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main_exp_3_3.py"), *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_demo_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("--demo", "--steps", "3", "--skip-speed-test", "--height", "32",
                   "--width", "48", "--save-every", "2", "--output-dir", str(out),
                   "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "DEMO" in proc.stdout and "Mean step time" in proc.stdout
    for pattern in ("*_final.jpg", "*_step0002.jpg", "*_log.csv", "*_loss.png"):
        assert len(glob.glob(str(out / pattern))) == 1, pattern
    assert load_rgb(glob.glob(str(out / "*_final.jpg"))[0]).shape == (32, 48, 3)


def test_cli_clear_errors(tiny_mat, tmp_path):
    img = str(tmp_path / "c.png")
    save_rgb(make_demo_image(20, 20), img)
    proc = run_cli("--skip-speed-test", "--content", "nope.jpg", "--style", img,
                   "--weights", tiny_mat, cwd=tmp_path)
    assert proc.returncode == 2 and "image not found: nope.jpg" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("--skip-speed-test", "--content", img, "--style", img,
                   "--weights", str(tmp_path / "missing.mat"), cwd=tmp_path)
    assert proc.returncode == 2 and "VGG19 weights not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--style-layers" in run_cli("--help", cwd=tmp_path).stdout


def test_driver_nonfinite_saves_last_good_image(tiny_mat, tmp_path, capsys):
    from labkit.runtime.transfer_run import run_and_save
    vgg = build(tiny_mat, dtype=np.float32, last_layer="relu3_1")
    content, style = images(vgg)
    obj = Objective(vgg, content, style, "relu3_1", {"relu1_1": 1})

    class Broken:
        def __getattr__(self, name):
            return getattr(obj, name)

        def __call__(self, image):
            total, grad, parts = obj(image)
            return (float("inf") if obj.evaluations == 3 else total), grad, parts

    rc = run_and_save(driver_args(tmp_path, steps=10), vgg, Broken(), content.copy(),
                          make_demo_image(32, 48))
    assert rc == 1 and "finite" in capsys.readouterr().err
    assert len(glob.glob(str(tmp_path / "*_lastgood_step0001.jpg"))) == 1
    assert not glob.glob(str(tmp_path / "*_final.jpg"))
