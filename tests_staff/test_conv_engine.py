"""labkit/engine/conv_engine.py through EngineConvolution (labkit/engine/attach.py): every method gives
the definition's results (float64 to 1e-9 relative) and its gradients pass the numerical check.

The expected values come from ``labkit.engine.conv_algos``'s references, not from the student's loop
layer: these tests check the kit's engine, so they must not depend on (or grade) student code.
"""
import numpy as np
import pytest

from labkit.engine import conv_algos
from labkit.engine.conv_engine import ConvEngine, choose_method
from labkit.runtime.gradcheck import assert_close, check_vjp, numeric_gradient
from labkit.engine.attach import EngineConvolution

CASES = [  # N, Cin, H, W, Cout, K, pad, stride
    (1, 3, 7, 9, 4, 3, 1, 1), (2, 4, 6, 5, 3, 3, 0, 1), (1, 2, 5, 6, 3, 3, 2, 1),
    (1, 3, 8, 7, 2, 5, 2, 1), (2, 2, 9, 8, 3, 3, 1, 2), (1, 3, 5, 5, 2, 1, 0, 1),
]
METHODS = ["img2col", "winograd", "winograd4", "fft", "auto"]


def supported(method, case):
    k, stride = case[5], case[7]
    if method in ("winograd", "winograd4"):
        return k == 3 and stride == 1
    if method == "fft":
        return stride == 1
    return True


class Reference:
    """The convolution's definition (labkit.engine.conv_algos references) with a layer's interface."""

    def __init__(self, weight, bias, padding, stride):
        self.weight, self.bias, self.padding, self.stride = weight, bias, padding, stride

    def forward(self, x):
        self.x = np.asarray(x, dtype=np.float64)
        return conv_algos.conv2d_reference(self.x, self.weight, self.bias, self.padding,
                                           self.stride)

    def backward(self, dy):
        dy = np.asarray(dy, dtype=np.float64)
        self.d_weight, self.d_bias = conv_algos.conv2d_weight_grad_reference(
            self.x, dy, self.weight.shape[1], self.padding, self.stride)
        return conv_algos.conv2d_input_grad_reference(dy, self.weight, self.padding,
                                                      self.stride, self.x.shape)


def pair(rng, case, method, dtype=np.float64):
    n, cin, h, w, cout, k, pad, stride = case
    ref = Reference(rng.standard_normal((cin, k, k, cout)), rng.standard_normal(cout), pad,
                    stride)
    fast = EngineConvolution(k, cin, cout, pad, stride, ref.weight.astype(dtype),
                             ref.bias.astype(dtype), method)
    return ref, fast, rng.standard_normal((n, cin, h, w))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_method_matches_definition_float64(rng, case, method):
    if not supported(method, case):
        pytest.skip(f"{method} does not support K={case[5]}, stride={case[7]}")
    ref, fast, x = pair(rng, case, method)
    y = ref.forward(x)
    assert_close("forward", fast.forward(x), y, 1e-9, f"{method} {case}: ")
    dy = rng.standard_normal(y.shape)
    assert_close("bottom_diff", fast.backward(dy), ref.backward(dy), 1e-9, f"{method} {case}: ")
    assert_close("d_weight", fast.d_weight, ref.d_weight, 1e-9, f"{method} {case}: ")
    assert_close("d_bias", fast.d_bias, ref.d_bias, 1e-9, f"{method} {case}: ")


@pytest.mark.parametrize("method", METHODS)
def test_method_gradient_check(rng, method):
    _, layer, x = pair(rng, CASES[0], method)
    check_vjp("bottom_diff", layer.forward, layer.backward, x, threshold=1e-7, context=method)
    dy = rng.standard_normal(layer.forward(x).shape)
    layer.backward(dy)
    def loss():
        layer.load_param(layer.weight, layer.bias)    # the engine caches filter transforms
        return float(np.sum(layer.forward(x) * dy))

    w = layer.weight
    assert_close("d_weight", layer.d_weight, numeric_gradient(loss, w), 1e-7, method)


# float32 error bounds (max|err| / max|ref|): GEMM-based methods ~1e-7 rounding;
# Winograd F(4x4) transforms have entries up to 8 and 1/24, so ~10x more.
FLOAT32_BOUND = {"img2col": 5e-6, "winograd": 5e-6, "winograd4": 5e-5, "fft": 5e-6, "auto": 5e-5}


@pytest.mark.parametrize("method", METHODS)
def test_method_float32_error(rng, method):
    case = (1, 64, 30, 28, 128, 3, 1, 1)        # big enough for "auto" to pick Winograd
    ref, fast, x = pair(rng, case, method, np.float32)
    y32 = fast.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    assert_close("forward float32", y32, ref.forward(x), FLOAT32_BOUND[method], method)
    dy = rng.standard_normal(y32.shape)
    dx32 = fast.backward(dy.astype(np.float32))
    assert dx32.dtype == np.float32
    assert_close("bottom_diff float32", dx32, ref.backward(dy), FLOAT32_BOUND[method], method)


@pytest.mark.parametrize("method", ["winograd", "winograd4"])
def test_winograd_chunks_match_definition(rng, method, monkeypatch):
    """Large maps are computed in chunks of tile rows (odd sizes: the last chunk is partial,
    the tiles run past the map and are cropped)."""
    monkeypatch.setattr(conv_algos, "CHUNK_BYTES", 1)     # chunks of one tile row
    assert conv_algos.winograd_plan(3, 4, 6, 5, 2)[1] == 1
    ref, fast, x = pair(rng, (1, 3, 11, 9, 4, 3, 1, 1), method)
    y = ref.forward(x)
    assert_close("forward in chunks", fast.forward(x), y, 1e-9, method)
    dy = rng.standard_normal(y.shape)
    assert_close("bottom_diff in chunks", fast.backward(dy), ref.backward(dy), 1e-9, method)


def test_engine_skips_param_grad_and_rejects_bad_methods(rng):
    _, layer, x = pair(rng, CASES[0], "winograd4")
    layer.need_param_grad = False
    layer.backward(np.ones_like(layer.forward(x)))
    assert not hasattr(layer, "d_weight")
    with pytest.raises(ValueError, match="method must be one of"):
        EngineConvolution(3, 2, 2, 1, 1, np.zeros((2, 3, 3, 2)), np.zeros(2), "magic")
    strided = EngineConvolution(3, 2, 2, 1, 2, np.zeros((2, 3, 3, 2)), np.zeros(2), "winograd")
    with pytest.raises(ValueError, match="needs stride 1"):
        strided.forward(np.zeros((1, 2, 6, 6)))


def test_reloading_weights_rebuilds_the_engine(rng):
    _, layer, x = pair(rng, CASES[0], "winograd")
    y1 = layer.forward(x)
    layer.load_param(layer.weight * 2, layer.bias * 2)
    assert_close("forward after load_param", layer.forward(x), 2 * y1, 1e-12)


def test_choose_method_table():
    assert choose_method(3, 1, 512, 512, 28, 28) == "winograd4"
    assert choose_method(3, 1, 512, 512, 14, 14) == "winograd"
    assert choose_method(3, 1, 3, 64, 224, 224) == "img2col"
    assert choose_method(3, 2, 512, 512, 28, 28) == "img2col"
    assert choose_method(5, 1, 512, 512, 28, 28) == "img2col"
    assert isinstance(ConvEngine(np.zeros((2, 3, 3, 2)), None, 1, 1), ConvEngine)


@pytest.mark.parametrize("method", ["img2col", "winograd", "winograd4", "fft"])
def test_empty_batch(method):
    """N = 0 gives empty outputs (Winograd's band size divided by zero before)."""
    from labkit.engine.conv_engine import ConvEngine
    engine = ConvEngine(np.ones((3, 3, 3, 4)), np.zeros(4), 1, 1, method=method)
    assert engine.forward(np.zeros((0, 3, 8, 8))).shape == (0, 4, 8, 8)
    assert engine.input_grad(np.zeros((0, 4, 8, 8)), (0, 3, 8, 8)).shape == (0, 3, 8, 8)
