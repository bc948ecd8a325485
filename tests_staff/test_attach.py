"""labkit/engine/attach.py: the tuned engine swapped into a student network from outside.

The tuned network must compute what the student's own layers compute (float64, 1e-9), the
student's layer objects must stay untouched, and the engine's pooling must match the
definition of max-pooling (a loop reference written here, not the student's code).
"""
import numpy as np
import pytest

from labkit.engine import perf
from labkit.engine.attach import (EngineConvolution, EngineMaxPooling, FusedReLU, tune,
                                  untune)
from labkit.runtime.gradcheck import assert_close, check_vjp
from labkit.runtime.images import make_demo_image, preprocess
from labkit.runtime.transfer import Objective
from stu_upload.style_transfer import VGG19 as StyleVGG19
from stu_upload.vgg_cpu import VGG19 as ClassifierVGG19


def loop_max_pool(x, k, s):
    """Definition of max-pooling (eqs. 3.7-3.9): output, and the gradient routing as a
    function dy -> dx (first maximum in row-major order gets it)."""
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    y = np.empty((n, c, ho, wo))
    where = {}
    for idx in np.ndindex(n, c, ho, wo):
        win = x[idx[0], idx[1], idx[2] * s:idx[2] * s + k, idx[3] * s:idx[3] * s + k]
        y[idx] = win.max()
        kh, kw = divmod(int(np.argmax(win)), k)
        where[idx] = (idx[0], idx[1], idx[2] * s + kh, idx[3] * s + kw)

    def grad(dy):
        dx = np.zeros(x.shape)
        for idx, target in where.items():
            dx[target] += dy[idx]
        return dx
    return y, grad


@pytest.mark.parametrize("k,s,shape", [(2, 2, (1, 3, 8, 10)), (3, 2, (2, 2, 9, 7)),
                                       (2, 2, (1, 2, 7, 9)), (3, 1, (1, 2, 5, 6))], ids=str)
@pytest.mark.parametrize("layout", ["NCHW", "channels-last"])
@pytest.mark.parametrize("threads", [False, True])
def test_engine_pooling_matches_definition(rng, k, s, shape, layout, threads):
    """Both layouts (the engine's convolutions hand on channels-last views; those are pooled
    by ranges of rows, or of channels where windows overlap), with and without threads;
    the result keeps the input's layout."""
    x = np.maximum(rng.standard_normal(shape), 0)       # ties: zeros after ReLU
    x[..., :2, :2] = 0.5                                # ties at a positive value too
    if layout == "channels-last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    layer = EngineMaxPooling(k, s)
    want_y, want_grad = loop_max_pool(x, k, s)
    dy = rng.standard_normal(want_y.shape)
    with perf.engine_threads(threads):
        y = layer.forward(x)
        dx = layer.backward(dy if layout == "NCHW" else
                            np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    assert_close("engine max-pool forward", y, want_y, 1e-12)
    assert_close("engine max-pool backward", dx, want_grad(dy), 1e-12)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous == (layout == "channels-last")
    assert dx.transpose(0, 2, 3, 1).flags.c_contiguous == (layout == "channels-last")


@pytest.mark.parametrize("layout", ["NCHW", "channels-last"])
def test_engine_pooling_negative_control(rng, layout):
    """A gradient routed to the last maximum instead of the first must fail the check."""
    x = np.zeros((1, 3, 4, 4))                          # all ties
    if layout == "channels-last":
        x = np.zeros((1, 4, 4, 3)).transpose(0, 3, 1, 2)
    want_y, want_grad = loop_max_pool(x, 2, 2)
    layer = EngineMaxPooling(2, 2)
    layer.forward(x)
    dy = rng.standard_normal(want_y.shape)
    wrong = want_grad(dy)[:, :, ::-1, ::-1]
    with pytest.raises(AssertionError):
        assert_close("engine max-pool backward", layer.backward(dy), wrong, 1e-12)


def test_engine_convolution_gradient_check(rng):
    w, b = rng.standard_normal((2, 3, 3, 3)), rng.standard_normal(3)
    layer = EngineConvolution(3, 2, 3, 1, 1, w, b, "winograd4")
    check_vjp("bottom_diff", layer.forward, layer.backward, rng.standard_normal((1, 2, 6, 7)),
              threshold=1e-7, context="EngineConvolution winograd4")


def _classifier(path):
    vgg = ClassifierVGG19(path, type=1, dtype=np.float64, verbose=False)
    vgg.build_model()
    vgg.init_model()
    vgg.load_model()
    return vgg


def test_tuned_classifier_matches_the_students_layers(mat_files, demo_image):
    vgg = _classifier(mat_files["legacy"])
    vgg.load_image(demo_image)
    want = vgg.forward().copy()
    own = dict(vgg.layers)
    run = tune(vgg)
    assert run.swapped == 16 * 2 + 5          # conv + ReLU pairs fused, pools
    assert all(isinstance(vgg.layers[f"conv{i}_1"], EngineConvolution) for i in range(1, 6))
    assert all(vgg.layers[f"conv{i}_1"].relu for i in range(1, 6))
    assert isinstance(vgg.layers["relu1_1"], FusedReLU)
    assert isinstance(vgg.layers["pool1"], EngineMaxPooling)
    assert vgg.layers["fc6"] is own["fc6"] and vgg.layers["relu6"] is own["relu6"]
    with run.context():
        got = vgg.forward()
    assert_close("tuned probabilities", got, want, 1e-9)
    untune(vgg)
    assert all(vgg.layers[n] is own[n] for n in own)


def test_tune_before_load_is_refused(mat_files):
    vgg = ClassifierVGG19(mat_files["legacy"], type=1, dtype=np.float64, verbose=False)
    vgg.build_model()
    with pytest.raises(ValueError, match="after load_model"):
        tune(vgg)


@pytest.mark.parametrize("content_layer,fuse,losses,method", [
    ("relu4_2", True, True, "auto"), ("relu4_2", True, False, "auto"),
    ("conv4_2", True, True, "auto"), ("relu4_2", False, False, "auto"),
    ("relu4_2", True, "both", "winograd4"), ("conv4_2", True, "both", "winograd"),
    ("relu4_2", False, True, "winograd4")], ids=str)
def test_tuned_style_gradient_matches_the_students_layers(tiny_mat, content_layer, fuse,
                                                          losses, method):
    """Every engine path (fused conv + ReLU, a loss on a conv output kept unfused, no fusion;
    the engine's loss layers or the student's, one loss per thread or not; the channels-last
    Winograd in every layer) gives the student's loss and image gradient (float64, 1e-9)."""
    styles = {n: 1.0 for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")}

    def objective(tuned):
        vgg = StyleVGG19(tiny_mat, dtype=np.float64)
        vgg.build_model(last_layer="relu5_1")
        vgg.init_model()
        vgg.load_model()
        run = (tune(vgg, method, need_param_grad=False, fuse_relu=fuse,
                    keep=[content_layer, *styles]) if tuned else None)
        content = preprocess(make_demo_image(32, 48, seed=0), vgg.mean_pixel, 32, 48)
        style = preprocess(make_demo_image(32, 48, seed=7), vgg.mean_pixel, 32, 48)
        obj = Objective(vgg, content, style, content_layer, styles,
                        loss_layers=run.loss_layers if run and losses else None)
        return obj, content, run
    lab, content, _ = objective(False)
    tuned, _, run = objective(True)
    layers = tuned.vgg.layers
    assert layers["conv4_2"].relu is (fuse and content_layer != "conv4_2")
    assert layers["conv1_1"].relu is fuse
    image = content + 3.0
    want_total, want_grad, _ = lab(image)
    with run.context():
        total, grad, _ = tuned(image)
    assert total == pytest.approx(want_total, rel=1e-10)
    assert_close("tuned image gradient", grad, want_grad, 1e-9)
    assert all(not hasattr(layer, "d_weight") for layer in layers.values())
    assert (type(tuned.style_loss["relu1_1"]).__module__ == "labkit.engine.losses") is bool(losses)


@pytest.mark.parametrize("method", ["img2col", "winograd", "winograd4", "fft"])
def test_fused_conv_relu_gradient_check(rng, method):
    """conv + ReLU in one layer: float64 central differences with a random upstream gradient
    (check_vjp), and it equals the student's ReLU after the engine's plain convolution."""
    from stu_upload.layer_1 import ReLULayer
    w, b = rng.standard_normal((4, 3, 3, 5)), rng.standard_normal(5)
    x = rng.standard_normal((1, 4, 9, 7))
    fused = EngineConvolution(3, 4, 5, 1, 1, w, b, method, need_param_grad=True, relu=True)
    check_vjp("bottom_diff", fused.forward, fused.backward, x, threshold=1e-7,
              context=f"EngineConvolution({method}, relu=True)")
    plain, relu = EngineConvolution(3, 4, 5, 1, 1, w, b, method), ReLULayer()
    dy = rng.standard_normal((1, 5, 9, 7))
    assert_close("fused forward", fused.forward(x), relu.forward(plain.forward(x)), 1e-12)
    assert_close("fused backward", fused.backward(dy), plain.backward(relu.backward(dy)), 1e-12)
    assert_close("fused weight gradient", fused.d_weight, plain.d_weight, 1e-12)


def test_fused_conv_relu_negative_control(rng):
    """Without the mask in the backward (the ReLU forgotten), the comparison must fail."""
    w, b = rng.standard_normal((4, 3, 3, 5)), rng.standard_normal(5)
    x = rng.standard_normal((1, 4, 9, 7))
    fused = EngineConvolution(3, 4, 5, 1, 1, w, b, "winograd4", relu=True)
    plain = EngineConvolution(3, 4, 5, 1, 1, w, b, "winograd4")
    dy = rng.standard_normal((1, 5, 9, 7))
    fused.forward(x)
    plain.forward(x)
    with pytest.raises(AssertionError):
        assert_close("fused backward", fused.backward(dy), plain.backward(dy), 1e-9)


def test_runtime_never_imports_engine_or_staff():
    """Imports run one way: labkit.runtime imports neither labkit.engine nor labkit.staff."""
    import ast
    import pathlib
    import labkit.runtime
    folder = pathlib.Path(labkit.runtime.__file__).parent
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            bad += [f"{path.name}: {n}" for n in names
                    if n.startswith(("labkit.engine", "labkit.staff"))]
    assert not bad, f"labkit.runtime must not import the engine or staff tools: {bad}"
    assert perf is not None
