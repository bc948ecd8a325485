"""Exp 3.2: stu_upload/vgg19_demo.py on the pycnml simulator against the float CPU VGG19.

Tolerance. The simulated net quantises the input and the filters of all 19 conv/fc layers to
INT8 with max-abs calibration (step m/127, rounding noise rms m/440 per tensor, a few per cent
of the rms of typical activations) and keeps fp16 activations; 38 such tensors in a chain give
a relative logit error of several per cent. On these fixtures (logits spread ~3, top
probability ~0.3) that is a logit error range of 0.1-0.2 and max |prob diff| 0.005-0.02
(measured). We require max |prob diff| < 0.05 and logit error range < 0.5, top-1 equal and
top-5 overlap >= 4/5: 2.5x the measured worst, while a wrong fc6 layout (C, H, W instead of
H, W, C) gives 0.14-0.28 and 1.6-2.5, so the check still catches layout bugs.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.calibrate import QUANT_LAYERS, QuantFileError, calibrate_vgg19, demo_images
from labkit.runtime.cli import UserError
from labkit.runtime.fixtures import write_vgg19_mat
from labkit.runtime.images import ImageLoadError, make_demo_image, save_rgb
from labkit.runtime.matfile import WeightsFileError
from labkit.runtime.student import stu, to_student


def VGG19():
    return stu.vgg19_demo.VGG19()


def CpuVGG19(*args, **kwargs):
    return stu.vgg_cpu.VGG19(*args, **kwargs)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(weights, quant, [test images]): widths / 16, 10 classes; calibrated on other images."""
    folder = tmp_path_factory.mktemp("dlp")
    weights, quant = str(folder / "w.mat"), str(folder / "q.npz")
    write_vgg19_mat(weights, "legacy", width_div=16, num_classes=10, seed=0)
    calibrate_vgg19(weights, demo_images(str(folder / "calib"), 3, seed=100), quant, False)
    images = []
    for i, (h, w) in enumerate([(200, 260), (300, 240)]):
        images.append(str(folder / f"test{i}.png"))
        save_rgb(make_demo_image(h, w, seed=10 + i), images[-1])
    return weights, quant, images


@pytest.fixture(scope="module")
def cpu(setup):
    net = CpuVGG19(setup[0], type=1, dtype=np.float32, verbose=False)
    net.build_model()
    net.load_model()
    return net


def make_net(setup, spy=None):
    vgg = VGG19()
    vgg.build_model(param_path=setup[0], quant_param_path=setup[1])
    if spy is not None:   # record the float filters handed to loadParams
        load, net = vgg.net.loadParams, vgg.net
        vgg.net.loadParams = to_student(lambda i, f, b, q: (spy.__setitem__(
            net.getLayerName(i), (np.asarray(f), np.asarray(b))), load(i, f, b, q))[1],
            ("__call__",))      # graded in the sandbox: called back from the student's code
    vgg.load_model()
    return vgg


def test_backend_is_the_simulator_here():
    vgg19_demo = stu.vgg19_demo.module
    assert vgg19_demo.SIMULATED and "simulator" in vgg19_demo.BACKEND


def test_net_structure(setup):
    vgg = make_net(setup)
    net = vgg.net
    assert [net.getLayerName(i) for i in range(net.size())] == spec.LAB_LAYER_NAMES
    quantised = [net.getLayerName(i) for i in range(net.size()) if net.needToBeQuantized(i)]
    assert quantised == QUANT_LAYERS
    assert len(vgg.input_quant_params) == len(vgg.filter_quant_params) == 19


def test_simulated_net_agrees_with_float_cpu(setup, cpu, capsys):
    vgg = make_net(setup)
    for image in setup[2]:
        vgg.load_image(image)
        prob = vgg.forward().astype(np.float64)
        cpu.load_image(image)
        ref = cpu.forward()[0].astype(np.float64)
        assert prob.shape == ref.shape == (10,)
        assert prob.sum() == pytest.approx(1, abs=1e-3)
        assert prob.argmax() == ref.argmax()
        top5 = set(np.argsort(-prob)[:5]) & set(np.argsort(-ref)[:5])
        assert len(top5) >= 4
        assert np.abs(prob - ref).max() < 0.05
        assert np.ptp(np.log(prob) - np.log(ref)) < 0.5
    assert "inference time" in capsys.readouterr().out


def test_float_layouts_match_cpu_network(setup, cpu):
    """The float filters given to loadParams, used the way pycnml uses them (conv on NCHW
    with [Cout, Cin, K, K]; MLP with [Cout, Cin] on pool5 flattened as CnmlFlattenLayer does,
    in H, W, C order), reproduce the CPU network's float outputs; fc6 in C, H, W order would
    not."""
    loaded = {}
    make_net(setup, spy=loaded)
    assert sorted(loaded) == sorted(QUANT_LAYERS)
    acts, x = {}, cpu.load_image(setup[2][0])
    for name in cpu.param_layer_name:
        acts[name + ":in"], x = x, cpu.layers[name].forward(x)
        acts[name] = x
    # conv1_1 with pycnml's [Cout, Cin, K, K]
    f, b = loaded["conv1_1"]
    w = f.reshape(acts["conv1_1"].shape[1], 3, 3, 3)
    xin = np.pad(acts["conv1_1:in"].astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xin, (3, 3), axis=(2, 3))
    ref = np.einsum("nchwij,ocij->nohw", win, w) + b[None, :, None, None]
    np.testing.assert_allclose(ref, acts["conv1_1"], rtol=1e-4, atol=1e-3)
    # fc6 on pycnml's flatten (H, W, C order), then fc7, fc8
    flat = acts["pool5"].transpose(0, 2, 3, 1).reshape(1, -1).astype(np.float64)
    for name in ("fc6", "fc7", "fc8"):
        f, b = loaded[name]
        cout = b.size
        out = flat @ f.reshape(cout, -1).T + b
        np.testing.assert_allclose(out, acts[name], rtol=1e-4, atol=1e-4 * np.abs(out).max())
        flat = np.maximum(out, 0)
    # negative control: a plain NCHW (C, H, W) flatten is not what pycnml's flatten produces
    wrong = acts["pool5"].reshape(1, -1) @ loaded["fc6"][0].reshape(
        loaded["fc6"][1].size, -1).T + loaded["fc6"][1]
    assert np.abs(wrong - acts["fc6"]).max() > 0.1 * np.abs(acts["fc6"]).max()


def test_get_top5_and_evaluate(setup, cpu, tmp_path, capsys):
    vgg = make_net(setup)
    labels = []
    for image in setup[2]:
        cpu.load_image(image)
        labels.append(int(cpu.forward()[0].argmax()))
    vgg.load_image(setup[2][0])
    vgg.forward()
    assert vgg.get_top5(labels[0]) == (True, True)
    assert vgg.get_top5(vgg.top_k(10)[-1][0]) == (False, False)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{setup[2][0]} {labels[0]}\n{os.path.basename(setup[2][1])} "
                   f"{(labels[1] + 1) % 10}\n")
    os.symlink(setup[2][1], tmp_path / os.path.basename(setup[2][1]))
    acc1, acc5 = vgg.evaluate(str(lst))
    assert acc1 == 0.5 and acc5 >= 0.5
    out = capsys.readouterr().out
    assert "top-1 accuracy: 0.5000 (1/2)" in out and "top-5 accuracy" in out
    lst.write_text("only_a_path.png\n")
    with pytest.raises(UserError, match="image_path label"):
        vgg.evaluate(str(lst))


def test_misuse_errors(setup, tmp_path):
    weights, quant, images = setup
    with pytest.raises(QuantFileError, match="python -m labkit.runtime.calibrate"):
        VGG19().build_model(weights, str(tmp_path / "missing.npz"))
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    for path in (str(bad), str(tmp_path / "none.mat")):
        with pytest.raises(WeightsFileError):
            VGG19().build_model(path, quant)
    with pytest.raises(RuntimeError, match="build_model"):
        VGG19().load_model()
    built = VGG19()
    built.build_model(weights, quant)
    built.load_image(images[0])
    with pytest.raises(RuntimeError, match="load_model"):
        built.forward()
    vgg = make_net(setup)
    with pytest.raises(RuntimeError, match="load_image"):
        vgg.forward()
    with pytest.raises(RuntimeError, match="forward"):
        vgg.top_k()
    with pytest.raises(ImageLoadError, match="not found"):
        vgg.load_image(str(tmp_path / "missing.jpg"))


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "main_exp_3_2.py")] + args,
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_driver_demo_end_to_end(tmp_path):
    res = _run(["--demo", "--runs", "2"], tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "DEMO" in out and "Backend: pycnml simulator" in out
    assert out.count("inference time:") == 2 and "run 2/2: top-1 class" in out
    for line in ("top-1 equal: yes", "top-5 overlap: ", "max |prob difference|: ",
                 "CPU forward"):
        assert line in out, line


def test_driver_missing_quant_file_and_help(setup, tmp_path):
    res = _run(["--weights", setup[0], "--quant", str(tmp_path / "q.npz"), "--image",
                setup[2][0]], tmp_path)
    assert res.returncode == 2
    assert "python -m labkit.runtime.calibrate" in res.stderr and "Traceback" not in res.stderr
    res = _run(["--help"], tmp_path)
    for flag in ("--weights", "--quant", "--image", "--runs", "--demo", "--evaluate"):
        assert flag in res.stdout
