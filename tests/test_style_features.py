"""Issue 15's style-transfer features (runtime code, not student tasks): several styles with
blend weights, style scale, average pooling, multi-scale, histogram colour transfer, the
contact sheet and exact resume."""
import glob
import os

import numpy as np
import pytest

from labkit.runtime import nofollow
from labkit.runtime.checkpoint import load_checkpoint, resolve, save_checkpoint
from labkit.runtime.colour import histogram_transfer, match_channel, render
from labkit.runtime.gradcheck import GradientCheckError, check_vjp
from labkit.runtime.images import load_rgb, make_demo_image, preprocess
from labkit.runtime.multiscale import (estimate_bytes, min_side, resize_bilinear_nchw,
                                       scale_sizes, schedule, split_steps)
from labkit.runtime.pooling import AvgPoolingLayer, avgpool_forward, use_avg_pooling
from labkit.runtime.runlog import contact_sheet
from labkit.runtime.transfer import Objective, style_targets
from labkit.runtime.student import stu


def gram_matrix(features):
    return stu.layer_3.gram_matrix(features)


def VGG19(*args, **kwargs):
    return stu.style_transfer.VGG19(*args, **kwargs)

STYLE = {"relu1_1": 1, "relu2_1": 1, "relu3_1": 1}
ENGINE = os.path.isdir(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "labkit", "engine"))


def build(path, dtype=np.float64, last_layer="relu3_1"):
    vgg = VGG19(path, dtype=dtype)
    vgg.build_model(last_layer=last_layer)
    vgg.init_model()
    vgg.load_model()
    return vgg


def img(vgg, h, w, seed):
    return preprocess(make_demo_image(40, 56, seed=seed), vgg.mean_pixel, h, w, vgg.dtype)


# ---------------------------------------------------------------- several styles, blend
def test_style_given_twice_at_half_weights_equals_single_style(tiny_mat):
    vgg = build(tiny_mat)
    content, style = img(vgg, 16, 24, 0), img(vgg, 16, 24, 7)
    one = Objective(vgg, content, style, "relu3_1", STYLE)
    two = Objective(vgg, content, [style, style.copy()], "relu3_1", STYLE,
                    style_blend=[0.5, 0.5])
    for name in STYLE:
        assert np.array_equal(one.style_target(name), two.style_target(name)), name
    x = img(vgg, 16, 24, 3)
    a, b = one(x), two(x)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


def test_blend_is_the_weighted_mean_of_grams(tiny_mat):
    vgg = build(tiny_mat)
    s1, s2 = img(vgg, 16, 24, 7), img(vgg, 16, 24, 11)
    shapes = {n: vgg.forward(s1, list(STYLE))[n].shape for n in STYLE}
    targets = style_targets(vgg, [s1, s2], list(STYLE), shapes, blend=[7, 3])   # normalised
    f1, f2 = vgg.forward(s1, list(STYLE)), vgg.forward(s2, list(STYLE))
    for name in STYLE:
        expected = 0.7 * gram_matrix(f1[name]) + 0.3 * gram_matrix(f2[name])
        np.testing.assert_allclose(targets[name], expected, rtol=1e-12)
        assert not np.allclose(targets[name], gram_matrix(f1[name]))    # negative control


# ---------------------------------------------------------------- style scale
def test_style_scale_targets_come_from_the_resized_image(tiny_mat):
    vgg = build(tiny_mat)
    rgb = make_demo_image(40, 56, seed=7)
    content = preprocess(make_demo_image(40, 56, seed=0), vgg.mean_pixel, 16, 24, vgg.dtype)
    big = preprocess(rgb, vgg.mean_pixel, 32, 48, vgg.dtype)          # --style-scale 2
    obj = Objective(vgg, content, [big], "relu3_1", STYLE)
    feats = vgg.forward(big, list(STYLE))
    for name in STYLE:
        # 4x the pixels: the Gram (a sum over pixels) is scaled back to per-pixel statistics
        expected = gram_matrix(feats[name]) * 0.25
        np.testing.assert_allclose(obj.style_target(name), expected, rtol=1e-12)
    same = preprocess(rgb, vgg.mean_pixel, 16, 24, vgg.dtype)
    plain = Objective(vgg, content, [same], "relu3_1", STYLE)
    assert not np.allclose(plain.style_target("relu1_1"), obj.style_target("relu1_1"))


# ---------------------------------------------------------------- average pooling
@pytest.mark.parametrize("k,s,shape", [(2, 2, (2, 3, 6, 8)), (3, 2, (1, 2, 7, 9)),
                                       (2, 1, (1, 2, 5, 4)), (3, 3, (1, 1, 8, 7))])
def test_avg_pooling_gradient(k, s, shape, rng):
    x = rng.standard_normal(shape)
    layer = AvgPoolingLayer(k, s)
    check_vjp(f"avg pool K={k} s={s}", layer.forward,
              lambda dy: (layer.forward(x), layer.backward(dy))[1], x, threshold=1e-8)


def test_avg_pooling_values_and_negative_control(rng):
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(avgpool_forward(x, 2, 2)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    layer = AvgPoolingLayer(2, 2)
    x = rng.standard_normal((1, 2, 4, 6))
    with pytest.raises(GradientCheckError, match="relative error"):   # a wrong backward
        check_vjp("avg pool x2", layer.forward,
                  lambda dy: (layer.forward(x), 2 * layer.backward(dy))[1], x)


def test_use_avg_pooling_swaps_every_pool(tiny_mat):
    vgg = build(tiny_mat, last_layer="pool5")
    assert use_avg_pooling(vgg) == 5
    assert all(type(vgg.layers[f"pool{i}"]).__name__ == "AvgPoolingLayer" for i in range(1, 6))
    x = img(vgg, 32, 32, 1)
    out = vgg.forward(x, ["relu2_1"])["relu2_1"]
    dx = vgg.backward(np.ones_like(out), "relu2_1")
    assert out.shape == (1, 4, 16, 16) and dx.shape == x.shape


# ---------------------------------------------------------------- multi-scale
def test_multiscale_sizes_and_step_split():
    assert split_steps(100, 3) == [33, 33, 34]
    assert split_steps(7, 2) == [3, 4] and split_steps(6, 3) == [2, 2, 2]
    assert sum(split_steps(101, 4)) == 101
    with pytest.raises(ValueError):
        split_steps(2, 3)
    assert scale_sizes(192, 320, [256, 384, 512]) == [(154, 256), (230, 384), (307, 512)]
    plan = schedule(192, 320, [160, 320], 11)
    assert plan == [(0, 5, (96, 160)), (5, 6, (192, 320))]
    assert schedule(192, 320, None, 11) == [(0, 11, (192, 320))]


def test_bilinear_upsampling(rng):
    x = rng.standard_normal((1, 3, 5, 7))
    assert np.array_equal(resize_bilinear_nchw(x, 5, 7), x)           # same size: identity
    const = np.full((1, 3, 4, 4), 2.5)
    assert np.allclose(resize_bilinear_nchw(const, 9, 13), 2.5)
    ramp = np.tile(np.arange(4.0), (1, 1, 4, 1))                       # linear in w
    up = resize_bilinear_nchw(ramp, 4, 8)[0, 0, 0]
    assert np.allclose(up[1:-1], (np.arange(1, 7) + 0.5) / 2 - 0.5)   # half-pixel centres
    assert resize_bilinear_nchw(x.astype(np.float32), 10, 14).dtype == np.float32


def test_min_side_and_memory_rule():
    assert min_side("relu1_1") == 1 and min_side("relu5_1") == 16 and min_side("pool5") == 16
    assert min_side("relu4_2") == 8
    small = estimate_bytes(192, 320, "relu5_1", 4)
    assert 300e6 < small < 2e9
    assert estimate_bytes(384, 640, "relu5_1", 4) > 3.9 * small
    assert estimate_bytes(192, 320, "relu5_1", 8) == 2 * small - 8 * 4 * 3 * 192 * 320


# ---------------------------------------------------------------- histogram colour transfer
def test_histogram_transfer_matches_the_content_histograms():
    content = make_demo_image(48, 64, seed=0)
    out_float = make_demo_image(48, 64, seed=9).astype(np.float64) * 0.6 + 40 + \
        np.random.default_rng(0).normal(0, 3, (48, 64, 3))
    before = np.clip(np.round(out_float), 0, 255).astype(np.uint8)
    matched = histogram_transfer(content, out_float)
    for c in range(3):
        h_content = np.bincount(content[:, :, c].ravel(), minlength=256)
        h_out = np.bincount(matched[:, :, c].ravel(), minlength=256)
        # same size: the histograms are equal (tolerance 0 counts)
        assert np.array_equal(h_out, h_content), c
        assert not np.array_equal(np.bincount(before[:, :, c].ravel(), minlength=256),
                                  h_content)                  # negative control
        # the output's ordering inside the channel is kept (rank-preserving)
        order = np.argsort(out_float[:, :, c].ravel(), kind="stable")
        assert np.all(np.diff(matched[:, :, c].ravel()[order].astype(int)) >= 0)


def test_histogram_transfer_other_size_within_tolerance():
    content = make_demo_image(90, 120, seed=0)
    out = make_demo_image(48, 64, seed=9).astype(np.float64)
    matched = histogram_transfer(content, out)
    from labkit.runtime.images import resize_bilinear
    ref = resize_bilinear(content, 48, 64)
    for c in range(3):
        cdf_a = np.cumsum(np.bincount(matched[:, :, c].ravel(), minlength=256)) / matched[:, :, c].size
        cdf_b = np.cumsum(np.bincount(ref[:, :, c].ravel(), minlength=256)) / ref[:, :, c].size
        assert np.max(np.abs(cdf_a - cdf_b)) < 1e-9      # tolerance: CDFs equal
    x = np.array([3.0, 1.0, 2.0])
    assert np.array_equal(match_channel(x, np.array([10.0, 0.0, 20.0, 30.0, 40.0])),
                          [40.0, 0.0, 20.0])               # quantiles when sizes differ


def test_render_modes():
    mean = np.array([100.0, 110.0, 120.0])
    image = np.random.default_rng(0).normal(0, 40, (1, 3, 12, 16))
    content = make_demo_image(12, 16, seed=1)
    plain = render(image, mean)
    assert plain.dtype == np.uint8 and plain.shape == (12, 16, 3)
    assert not np.array_equal(render(image, mean, content, "luminance"), plain)
    hist = render(image, mean, content, "histogram")
    assert np.array_equal(np.sort(hist[:, :, 1].ravel()), np.sort(content[:, :, 1].ravel()))
    with pytest.raises(ValueError):
        render(image, mean, content, "rgb")


# ---------------------------------------------------------------- contact sheet, checkpoint
def test_contact_sheet(tmp_path):
    tiles = [(make_demo_image(30, 40, seed=i), [f"step {i}", "loss 1"]) for i in range(8)]
    path = contact_sheet(str(tmp_path / "s.png"), tiles, thumb_height=32, columns=3,
                         title="run x")
    sheet = load_rgb(path)
    assert sheet.shape[0] > 3 * 32 and sheet.shape[1] > 3 * 40
    assert os.listdir(tmp_path) == ["s.png"]                      # no temporary left


def test_checkpoint_round_trip_and_atomic(tmp_path, rng):
    path = str(tmp_path / "r_checkpoint.npz")
    image = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    state = {"mt": rng.standard_normal((1, 3, 4, 5)).astype(np.float32),
             "vt": rng.random((1, 3, 4, 5)).astype(np.float32), "step": 7}
    gen = np.random.default_rng(5)
    save_checkpoint(path, image, 7, {"lr": 1.0, "style": ["a.png"]}, gen.bit_generator.state,
                    state)
    assert os.listdir(tmp_path) == ["r_checkpoint.npz"]
    ck = load_checkpoint(path)
    assert ck["step"] == 7 and ck["settings"]["style"] == ["a.png"]
    assert np.array_equal(ck["image"], image) and ck["image"].dtype == np.float32
    assert np.array_equal(ck["optimizer_state"]["mt"], state["mt"])
    assert ck["optimizer_state"]["step"] == 7
    again = np.random.default_rng(0)
    again.bit_generator.state = ck["rng_state"]
    assert again.random() == gen.random()
    assert resolve(str(tmp_path / "r")) == path
    assert resolve(str(tmp_path / "r_final.jpg")) == path


# ---------------------------------------------------------------- exact resume
DEMO = ["--demo", "--skip-speed-test", "--no-progress", "--conv", "lab", "--height", "32",
        "--width", "48", "--steps", "6", "--save-every", "2"]


def _final_image(folder):
    """The checkpoint's image and step, read without following a link (the folder is the
    student's when graded: a private copy for load_checkpoint, which takes a path)."""
    import tempfile
    (rel,) = nofollow.glob(folder, "*_checkpoint.npz")
    path = os.path.join(tempfile.mkdtemp(), os.path.basename(rel))
    with open(path, "wb") as f:
        f.write(nofollow.read_bytes(folder, rel))
    ck = load_checkpoint(path)
    return ck["image"], ck["step"]


def _interrupt_at(k):
    def hook(step, image, record):
        if step == k:
            raise KeyboardInterrupt
    return hook


@pytest.mark.parametrize("dtype,extra,k", [
    ("float64", [], 3), ("float32", [], 3),
    ("float64", ["--scales", "24,48"], 3),          # at the scale boundary (3 + 3 steps)
    ("float64", ["--scales", "24,48", "--pooling", "avg"], 4),     # inside the second scale
    pytest.param("float32", ["--conv", "auto"], 3, marks=pytest.mark.skipif(
        not ENGINE, reason="the tuned engine is not part of the student kit")),
])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, dtype, extra, k, capsys):
    import main_exp_3_3 as drv
    argv = DEMO + ["--dtype", dtype] + extra
    assert drv.main(argv + ["--output-dir", str(tmp_path / "a")]) == 0
    with pytest.raises(KeyboardInterrupt):
        drv.main(argv + ["--output-dir", str(tmp_path / "b")], hook=_interrupt_at(k))
    image_k, step_k = _final_image(tmp_path / "b")
    assert step_k == k and glob.glob(str(tmp_path / "b" / f"*_interrupted_step{k:04d}.jpg"))
    (ck,) = glob.glob(str(tmp_path / "b" / "*_checkpoint.npz"))
    assert drv.main(["--resume", ck[:-len("_checkpoint.npz")], "--no-progress",
                     "--skip-speed-test"]) == 0
    one_go, n1 = _final_image(tmp_path / "a")
    resumed, n2 = _final_image(tmp_path / "b")
    assert n1 == n2 == 6 and resumed.dtype == np.dtype(dtype)
    rel = np.max(np.abs(resumed - one_go)) / np.max(np.abs(one_go))
    print(f"resume {dtype} {extra} k={k}: max relative difference {rel:.3g}")
    if dtype == "float64":
        assert np.array_equal(resumed, one_go)                # bitwise: the same maths
    else:
        assert rel <= 1e-5
    assert not np.array_equal(resumed, image_k)               # control: it did go on
    with nofollow.open(tmp_path, nofollow.glob(tmp_path, "b/*_log.csv")[0], "r") as f:
        rows = f.read().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 7)]
    assert glob.glob(str(tmp_path / "b" / "*_sheet.png"))
    assert not [p for p in os.listdir(tmp_path / "b") if ".tmp" in p]
