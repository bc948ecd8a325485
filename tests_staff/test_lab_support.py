"""tests_hidden/lab_support.py's check of exp 3.2's DLP net (the grader's own net, built by
the student's vgg19_demo.py through DlpRecorder): it must hold VGG19's layers and the file's
weights. Each check has an attack that passes without it (negative controls)."""
import os
import sys

import numpy as np
import pytest

from labkit.runtime.calibrate import calibrate_vgg19, demo_images
from labkit.runtime.fixtures import write_vgg19_mat
from labkit.runtime.matfile import load_vgg19_mat

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests_hidden"))
from lab_support import DLP_KINDS, DlpRecorder, check_dlp_net, install_dlp_recorder  # noqa: E402,E501

import stu_upload.vgg19_demo as demo  # noqa: E402  (the reference's, in this process)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dlpcheck")
    weights, quant = str(folder / "w.mat"), str(folder / "q.npz")
    write_vgg19_mat(weights, "legacy", width_div=16, num_classes=10, seed=0)
    calibrate_vgg19(weights, demo_images(str(folder / "calib"), 2, seed=100), quant, False)
    recorder, restore = install_dlp_recorder(demo)
    try:
        vgg = demo.VGG19()
        vgg.build_model(param_path=weights, quant_param_path=quant)
        vgg.load_model()
    finally:
        restore()
    assert not isinstance(demo.pycnml, DlpRecorder)        # restored
    return recorder, load_vgg19_mat(weights)


def test_the_reference_net_passes(built):
    recorder, weights = built
    assert len(recorder.nets) == 1 and recorder.nets[0].size() == len(DLP_KINDS)
    check_dlp_net(recorder.nets[0], weights)


def test_weights_that_are_not_the_files_fail(built):
    """Replaying chosen probabilities through the real layers: fc8's weights zeroed (its
    bias then decides the output) must fail; so must a permutation-free change of one value."""
    recorder, weights = built
    net = recorder.nets[0]
    fc8 = [layer for layer in net._layers if layer.quantized][-1]
    saved = fc8.w.copy()
    try:
        fc8.w[...] = 0
        with pytest.raises(AssertionError, match="'fc8': the loaded weights are not the file's"):
            check_dlp_net(net, weights)
        fc8.w[...] = saved
        fc8.w.flat[0] = saved.flat[0] + 1
        with pytest.raises(AssertionError, match="not the file's"):
            check_dlp_net(net, weights)
    finally:
        fc8.w[...] = saved
    check_dlp_net(net, weights)


def test_a_net_without_vgg19s_layers_fails(built):
    """A single MLP + softmax whose bias is the replayed log-probabilities."""
    from labkit.runtime import pycnml_sim
    _, weights = built
    net = pycnml_sim.CnmlNet(1)
    net.setInputShape(1, 3, 224, 224)
    net.createMlpLayer("fc8", 10, pycnml_sim.QuantParam(0, 1.0))
    net.createSoftmaxLayer("softmax", 1)
    with pytest.raises(AssertionError, match="expected VGG19's"):
        check_dlp_net(net, weights)


@pytest.mark.parametrize("name,key,match", [
    ("conv3_1", "kh and kw swapped", "yours is .*kh and kw swapped"),
    ("conv1_2", "[Cin, Cout, K, K]", r"yours is \[Cin, Cout, K, K\]"),
    ("fc6", "C, H, W order", r"yours is .*C, H, W order"),
])
def test_wrong_layouts_fail_by_name(built, name, key, match):
    """The file's own values in a classic wrong layout (the same INT8 values in another
    order: the order-blind sum check passes them) must fail, naming the layout."""
    from lab_support import dlp_layouts, net_ints
    recorder, weights = built
    net = recorder.nets[0]
    layer = next(item for item in net._layers if item.name == name)
    saved = layer.w.copy()
    wrong = next(f for d, f in dlp_layouts(name, weights.layer(name).weight).items() if key in d)
    try:
        layer.w = net_ints(wrong, layer.filter_quant).reshape(saved.shape).astype(saved.dtype)
        assert not np.array_equal(layer.w, saved)
        with pytest.raises(AssertionError, match=match):
            check_dlp_net(net, weights)
    finally:
        layer.w = saved
    check_dlp_net(net, weights)


@pytest.mark.parametrize("name,shape", [("conv3_1", (3, 3, 5, 7)), ("fc6", (7, 7, 6, 9)),
                                        ("fc7", (1, 1, 70, 66))])
def test_dlp_layout_is_the_first_of_the_layouts(name, shape):
    """dlp_layout (the check's fast path, in tiles) is exactly the layout dlp_layouts names
    first, for the file's column-major arrays and row-major ones."""
    from lab_support import dlp_layout, dlp_layouts
    w = np.random.default_rng(3).integers(-128, 128, shape).astype(np.int8)
    for arr in (np.asfortranarray(w), w):
        want = next(iter(dlp_layouts(name, arr).values())).ravel()
        assert np.array_equal(dlp_layout(name, arr), want)
