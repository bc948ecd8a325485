"""stu_upload/vgg_cpu.py and main_exp_3_1.py on fixture .mat files (real struct layout)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from labkit.runtime import nofollow
from labkit.runtime import vgg19_spec as spec
from labkit.runtime.compare import expect, expect_equal, expect_shape
from labkit.runtime.student import stu


def ConvolutionalLayer(*args, **kwargs):
    return stu.layer_2.ConvolutionalLayer(*args, **kwargs)


def VGG19(*args, **kwargs):
    return stu.vgg_cpu.VGG19(*args, **kwargs)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(path, type=1, dtype=np.float64):
    vgg = VGG19(path, type=type, dtype=dtype, verbose=False)
    vgg.build_model()
    vgg.init_model()
    vgg.load_model()
    return vgg


def test_layer_names_and_shapes(mat_files):
    vgg = build(mat_files["legacy"])
    expect(list(vgg.param_layer_name) == spec.LAB_LAYER_NAMES, f"param_layer_name: yours "
           f"{list(vgg.param_layer_name)}, expected VGG19's 44 names {spec.LAB_LAYER_NAMES}")
    expect(set(vgg.layers) == set(spec.LAB_LAYER_NAMES), f"build_model: layers "
           f"{sorted(set(spec.LAB_LAYER_NAMES) - set(vgg.layers))} missing, "
           f"{sorted(set(vgg.layers) - set(spec.LAB_LAYER_NAMES))} extra")
    for name in spec.LAB_LAYER_NAMES:
        layer = vgg.layers[name]
        if name.startswith("conv"):
            expect((layer.kernel_size, layer.padding, layer.stride) == (3, 1, 1),
                   f"build_model: {name} has kernel {layer.kernel_size}, padding "
                   f"{layer.padding}, stride {layer.stride}; VGG19's are 3, 1, 1")
        elif name.startswith("pool"):
            expect((layer.kernel_size, layer.stride) == (2, 2), f"build_model: {name} has "
                   f"kernel {layer.kernel_size}, stride {layer.stride}; VGG19's are 2, 2")
    expect_shape("conv1_1's weight", vgg.layers["conv1_1"].weight, (3, 3, 3, 4),
                 equation="[Cin, K, K, Cout]")
    expect_shape("fc6's weight", vgg.layers["fc6"].weight, (7 * 7 * 32, 256),
                 equation="[H*W*Cin, Cout]")


def test_load_model_transposes_like_the_lab(mat_files):
    vgg = build(mat_files["legacy"])
    w = vgg.file.layer("conv3_2").weight
    expect_equal("conv3_2's weight after load_model", vgg.layers["conv3_2"].weight,
                 np.transpose(w, [2, 0, 1, 3]),
                 equation="the file's [K, K, Cin, Cout] as [Cin, K, K, Cout]")
    fc6 = vgg.file.layer("fc6").weight
    expect_equal("fc6's weight after load_model", vgg.layers["fc6"].weight,
                 fc6.reshape(-1, fc6.shape[3]), equation="[H, W, Cin, Cout] as [H*W*Cin, Cout]")


def test_fc6_flatten_matches_matconvnet_convolution(mat_files, demo_image):
    """fc6 is a 7x7 convolution in MatConvNet: flatten (H, W, C) + matrix = that conv."""
    vgg = build(mat_files["legacy"])
    vgg.load_image(demo_image)
    vgg.forward()
    w = vgg.file.layer("fc6").weight.astype(np.float64)                 # [7, 7, C, 4096]
    conv_layer = ConvolutionalLayer(7, w.shape[2], w.shape[3], 0, 1, type=1)  # your conv
    conv_layer.load_param(np.transpose(w, [2, 0, 1, 3]), vgg.file.layer("fc6").bias)
    conv = conv_layer.forward(vgg.pool5).reshape(vgg.pool5.shape[0], -1)
    fc6 = vgg.layers["fc6"].forward(vgg.layers["flatten"].forward(vgg.pool5))
    assert np.allclose(fc6, conv, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("layout", ["legacy", "meta"])
def test_classifies_end_to_end(mat_files, demo_image, layout):
    vgg = build(mat_files[layout], dtype=np.float32)
    image = vgg.load_image(demo_image)
    assert image.shape == (1, 3, 224, 224) and image.dtype == np.float32
    prob = vgg.forward()
    assert prob.shape == (1, 10) and np.isclose(prob.sum(), 1.0, atol=1e-5)
    top = vgg.top_k(5)
    assert top[0][2] == pytest.approx(prob.max())
    assert top[0][1] == f"random class {top[0][0]}, fixture"
    assert 0.15 < prob.max() < 0.999            # the fixture's classes are not degenerate


def test_both_layouts_give_the_same_probabilities(mat_files, demo_image):
    probs = []
    for layout in ("legacy", "meta"):
        vgg = build(mat_files[layout])
        vgg.load_image(demo_image)
        probs.append(vgg.forward())
    # the legacy mean is the average of a 224x224 image: equal up to the last bit
    assert np.allclose(probs[0], probs[1], rtol=1e-10, atol=0)


def test_raw_and_fast_paths_agree_float64(tiny_mat, demo_image):
    """The issue's acceptance check: relative difference of the probabilities < 1e-9."""
    probs = []
    for type in (0, 1):
        vgg = build(tiny_mat, type=type, dtype=np.float64)
        vgg.load_image(demo_image)
        probs.append(vgg.forward())
    rel = np.abs(probs[0] - probs[1]).max() / np.abs(probs[1]).max()
    assert rel < 1e-9, f"raw vs fast relative difference {rel:.3e} >= 1e-9"


def test_forward_before_image_is_clear(mat_files):
    with pytest.raises(RuntimeError, match="load_image"):
        build(mat_files["legacy"]).forward()


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main_exp_3_1.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_classifies_and_checks_pool5(mat_files, demo_image, tmp_path):
    dump = tmp_path / "pool5.npy"
    r = run_cli("--weights", mat_files["meta"], "--image", demo_image, "--quiet",
                "--dump-pool5", str(dump))
    assert r.returncode == 0, r.stderr
    assert "top-5:" in r.stdout and "Inference time" in r.stdout
    r = run_cli("--weights", mat_files["meta"], "--image", demo_image, "--quiet",
                "--check-pool5", str(dump))
    assert r.returncode == 0 and "MSE = 0 (PASS" in r.stdout
    # the driver ran the student's code in this folder: no link it left is followed
    with nofollow.open(tmp_path, "pool5.npy") as f:
        changed = np.load(f) + 1.0
    with nofollow.open(tmp_path, "pool5.npy", "wb") as f:
        np.save(f, changed)
    r = run_cli("--weights", mat_files["meta"], "--image", demo_image, "--quiet",
                "--check-pool5", str(dump))
    assert r.returncode == 1 and "FAIL" in r.stdout


def test_cli_missing_weights_is_one_clear_message(tmp_path, demo_image):
    r = run_cli("--weights", str(tmp_path / "none.mat"), "--image", demo_image)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "VGG19 weights not found" in r.stderr and spec.LEGACY_MD5 in r.stderr


def test_cli_bad_image_and_help(mat_files, tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    r = run_cli("--weights", mat_files["legacy"], "--image", str(bad))
    assert r.returncode == 2 and "not an image" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--help")
    assert r.returncode == 0
    for flag in ("--weights", "--image", "--layers", "--top-k", "--check-pool5", "--demo",
                 "--download"):
        assert flag in r.stdout


def test_cli_download_offline_fails_clearly(tmp_path, demo_image, monkeypatch):
    """--download with no network: a clear message, no partial file left behind."""
    import urllib.request

    from labkit.runtime import cli

    def no_network(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    dest = tmp_path / "models" / "w.mat"
    with pytest.raises(cli.UserError, match="download .* failed: Network is unreachable"):
        cli.download_weights(str(dest))
    assert not dest.exists()


def test_cli_demo_runs_without_weights(tmp_path):
    r = run_cli("--demo", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "DEMO" in r.stdout and "top-1:" in r.stdout


# ----------------------------------------------------------------------------- bad input
def test_fuzz_damaged_pool5_dumps(tmp_path_factory):
    """The --check-pool5 reader: Pool5FileError naming the file, or a finite float array."""
    import io

    from labkit.runtime.fuzzing import fuzz_reader
    from labkit.runtime.npyfile import Pool5FileError, read_pool5
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((1, 4, 7, 7)).astype(np.float32))

    def finite(arr):
        assert arr.dtype == np.float64 and np.all(np.isfinite(arr))

    path = tmp_path_factory.mktemp("fuzz") / "pool5.npy"
    assert fuzz_reader(buf.getvalue(), path, read_pool5, Pool5FileError, finite)

def test_pool5_dump_is_written_exactly_where_asked(tmp_path):
    from labkit.runtime.npyfile import read_pool5, write_pool5
    target = tmp_path / "dump"                      # no .npy suffix: np.save would add one
    write_pool5(str(target), np.ones((1, 2, 7, 7), np.float32))
    assert sorted(os.listdir(tmp_path)) == ["dump"]
    assert read_pool5(str(target)).shape == (1, 2, 7, 7)


def test_progress_lines_without_a_terminal(mat_files, demo_image):
    """Piped output (a log): plain lines, no carriage returns; the time printed once."""
    r = run_cli("--weights", mat_files["legacy"], "--image", demo_image)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout and "Inferencing layer 44/44: softmax\n" in r.stdout
    assert r.stdout.count("Inference time") == 1
