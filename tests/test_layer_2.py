"""stu_upload/layer_2.py: convolution (loops and img2col), max-pooling, flatten.

Gradient checks are float64 central differences of sum(f(x) * dy) with a random dy;
relative error = max|analytic - numeric| / max(max|analytic|, max|numeric|) < 1e-7.
"""
import numpy as np
import pytest

from labkit.runtime.compare import expect, expect_close, expect_equal, expect_shape
from labkit.runtime.gradcheck import GradientCheckError, assert_close, check_vjp, numeric_gradient
from labkit.runtime.recorded import Recorded
from labkit.runtime.student import lazy, runs_here, stu

# the student's classes and helpers, looked up when called (either file name: layer_2.py or
# the original kit's layers_2.py); this kit's helpers (img2col ...) are "beyond" the lab
(ConvolutionalLayer, FlattenLayer, MaxPoolingLayer, col2im, conv_output_size, img2col, pad_nchw,
 window_view) = lazy("layer_2", "ConvolutionalLayer", "FlattenLayer", "MaxPoolingLayer",
                     "col2im", "conv_output_size", "img2col", "pad_nchw", "window_view")

THRESHOLD = 1e-7
# expected values recorded from the reference solution (tests/data/layer_2.npz)
REC = Recorded("layer_2")


def make_conv(case, type):
    """The layer, input and upstream gradient of a recorded case (parameters loaded)."""
    d = REC[case]
    cin, k, _, cout = d["w"].shape
    layer = ConvolutionalLayer(k, cin, cout, int(d["pad"]), int(d["stride"]), type=type)
    layer.load_param(d["w"], d["b"])
    return layer, d


def param_loss(layer, name, value, x, dy):
    """``lambda: sum(layer.forward(x) * dy)`` with ``layer.<name> = value`` set first (the
    numeric gradient changes ``value`` in place; graded in the sandbox the layer's own
    arrays are not this process's)."""
    def loss():
        setattr(layer, name, value)
        return float(np.sum(layer.forward(x) * dy))
    return loss


# ---------------------------------------------------------------- pure functions
def test_conv_output_size_floor_rule():
    assert conv_output_size(224, 3, 1, 1) == 224
    assert conv_output_size(7, 3, 1, 2) == 4          # (7 + 2 - 3) // 2 + 1
    assert conv_output_size(9, 2, 0, 3) == 3          # floor drops the last column
    with pytest.raises(ValueError, match="output would be empty"):
        conv_output_size(2, 5, 1, 1)


def test_window_view_is_a_view(rng):
    x = rng.standard_normal((2, 3, 7, 8))
    v = window_view(x, 3, 2)
    assert v.shape == (2, 3, 3, 3, 3, 3)
    if runs_here():     # graded in the sandbox arrays come back as copies
        assert np.shares_memory(v, x)
    assert np.array_equal(v[1, 2, 1, 2], x[1, 2, 2:5, 4:7])


@pytest.mark.parametrize("case", REC.cases("img2col/"))
def test_img2col_rows_and_col2im_adjoint(case):
    d = REC[case]
    x, k, s = d["x"], int(d["k"]), int(d["s"])
    cols = img2col(x, k, s)
    ho, wo = (7 - k) // s + 1, (6 - k) // s + 1
    expect_shape(f"{case}: img2col matrix", cols, (2 * ho * wo, 3 * k * k),
                 equation="(N*H_out*W_out, Cin*K*K)")
    # row (n, h, w) is the window in (cin, kh, kw) order
    expect_equal(f"{case}: img2col row (n=1, h=1, w=0)", cols[1 * ho * wo + 1 * wo + 0],
                 x[1, :, s:s + k, 0:k].reshape(-1),
                 hint="row (n, h, w) is the window under output pixel (h, w), in (cin, kh, kw) "
                      "order")
    assert_close("img2col", cols, d["cols"], 1e-12, context=f"{case}: ")
    dx = col2im(d["c"], x.shape, k, s)
    assert_close("col2im", dx, d["dx"], 1e-12, context=f"{case}: ", equation="eq. 3.5")
    # col2im is the adjoint (transpose) of img2col: <img2col(x), c> == <x, col2im(c)>
    expect_close(f"{case}: <x, col2im(c)> (col2im is img2col's adjoint: <img2col(x), c>)",
                 np.sum(x * dx), np.sum(cols * d["c"]), 1e-12)


def test_pad_nchw(rng):
    x = rng.standard_normal((1, 2, 3, 4))
    p = pad_nchw(x, 2)
    assert p.shape == (1, 2, 7, 8) and np.array_equal(p[:, :, 2:5, 2:6], x)
    assert np.array_equal(pad_nchw(x, 0), x)
    if runs_here():     # graded in the sandbox arrays come back as copies
        assert pad_nchw(x, 0) is x


# ---------------------------------------------------------------- convolution
@pytest.mark.parametrize("type", [0, 1], ids=["raw", "img2col"])
@pytest.mark.parametrize("case", REC.cases("conv/"))
def test_conv_forward_matches_definition(case, type):
    layer, d = make_conv(case, type)
    assert_close("conv output", layer.forward(d["x"]), d["y"], 1e-12, context=f"{case}: ")


@pytest.mark.parametrize("type", [0, 1], ids=["raw", "img2col"])
@pytest.mark.parametrize("case", REC.cases("conv/"))
def test_conv_gradients(case, type):
    """The output first (a layer returning zeros must not pass), then every gradient against
    the recorded values and against central differences of the layer's own forward."""
    layer, d = make_conv(case, type)
    x, dy = d["x"], d["dy"]
    ctx = f"{case} type={type}: "
    assert_close("conv output", layer.forward(x), d["y"], 1e-12, ctx)
    assert_close("conv bottom_diff", layer.backward(dy), d["dx"], 1e-10, ctx)
    assert_close("conv d_weight", layer.d_weight, d["dw"], 1e-10, ctx)
    assert_close("conv d_bias", layer.d_bias, d["db"], 1e-10, ctx)
    check_vjp("conv bottom_diff", layer.forward, layer.backward, x, dy=dy,
              threshold=THRESHOLD, context=ctx)
    layer.forward(x)
    layer.backward(dy)
    d_weight, d_bias = layer.d_weight, layer.d_bias
    weight, bias = layer.weight, layer.bias
    assert_close("conv d_weight", d_weight,
                 numeric_gradient(param_loss(layer, "weight", weight, x, dy), weight),
                 THRESHOLD, ctx)
    layer.weight = weight
    assert_close("conv d_bias", d_bias,
                 numeric_gradient(param_loss(layer, "bias", bias, x, dy), bias), THRESHOLD, ctx)


@pytest.mark.parametrize("case", REC.cases("conv/"))
def test_conv_raw_and_img2col_agree(case):
    raw, d = make_conv(case, 0)
    fast, _ = make_conv(case, 1)
    x, dy = d["x"], d["dy"]
    y0, y1 = raw.forward(x), fast.forward(x)
    assert_close("forward", y1, y0, 1e-12)
    assert_close("bottom_diff", fast.backward(dy), raw.backward(dy), 1e-12)
    assert_close("d_weight", fast.d_weight, raw.d_weight, 1e-12)
    assert_close("d_bias", fast.d_bias, raw.d_bias, 1e-12)


def test_conv_skips_param_gradients_when_not_needed():
    layer, d = make_conv("conv/N1_C2-3_5x5_K3_p1_s1", 1)
    layer.need_param_grad = False
    layer.forward(d["x"])
    layer.backward(np.ones((1, 3, 5, 5)))
    assert not hasattr(layer, "d_weight")


def test_negative_control_wrong_conv_gradient_fails():
    """A backward whose result is off by one pixel is caught."""
    layer, d = make_conv("conv/N1_C2-3_5x5_K3_p1_s1", 1)
    x = d["x"]

    def wrong_backward(dy):
        dx = layer.backward(dy)
        return np.roll(dx, 1, axis=-1)              # off by one pixel

    with pytest.raises(GradientCheckError, match="conv bottom_diff: relative error"):
        check_vjp("conv bottom_diff", layer.forward, wrong_backward, x, threshold=THRESHOLD)


@pytest.mark.parametrize("type", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_keeps_dtype(type, dtype):
    layer, d = make_conv("conv/N2_C3-2_6x7_K3_p0_s1", type)
    x = d["x"].astype(dtype)
    y = layer.forward(x)
    assert y.dtype == dtype
    assert layer.backward(np.ones_like(y)).dtype == dtype


def test_conv_clear_errors(rng):
    layer = ConvolutionalLayer(3, 4, 2, 1, 1, type=1)
    with pytest.raises(RuntimeError, match="load_param"):
        layer.forward(np.zeros((1, 4, 5, 5)))
    layer.init_param()
    with pytest.raises(ValueError, match=r"expected \(N, 4, H, W\)"):
        layer.forward(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"weight has shape .* expected \(4, 3, 3, 2\)"):
        layer.load_param(np.zeros((3, 3, 4, 2)), np.zeros(2))
    with pytest.raises(stu._base.BackwardBeforeForwardError, match="before forward"):
        ConvolutionalLayer(3, 4, 2, 1, 1, type=0).backward(np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="type must be"):
        ConvolutionalLayer(3, 4, 2, 1, 1, type=2)


# ---------------------------------------------------------------- pooling
@pytest.mark.parametrize("type", [0, 1], ids=["raw", "vectorised"])
@pytest.mark.parametrize("case", REC.cases("pool/"))
def test_pool_forward_and_gradient(case, type):
    d = REC[case]
    layer = MaxPoolingLayer(int(d["k"]), int(d["s"]), type=type)
    ctx = f"{case} type={type}: "
    y = layer.forward(d["x"])
    expect_equal(f"{ctx}max-pool output Y", y, d["y"], equation="eq. 3.7")
    assert_close("pool bottom_diff", layer.backward(d["dy"]), d["dx"], 1e-12, ctx,
                 equation="eqs. 3.8-3.9")
    x = d["x"].copy()
    x[..., 0, 1] += 1e-3               # the recorded tie moved apart: differentiable there
    check_vjp("pool bottom_diff", layer.forward, layer.backward, x, threshold=THRESHOLD,
              context=ctx)


@pytest.mark.parametrize("case", REC.cases("pool/"))
def test_pool_raw_and_vectorised_agree(case):
    d = REC[case]
    x, k, s = d["x"], int(d["k"]), int(d["s"])        # x has a tie: the first maximum wins
    raw, fast = MaxPoolingLayer(k, s, 0), MaxPoolingLayer(k, s, 1)
    expect_equal("type=1 max-pool output vs type=0's", fast.forward(x), raw.forward(x),
                 equation="eq. 3.7")
    # overlapping windows add gradients in another order: equal up to rounding
    assert_close("pool bottom_diff", fast.backward(d["dy"]), raw.backward(d["dy"]), 1e-14)


def test_pool_keeps_dtype_and_errors(rng):
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    for type in (0, 1):
        layer = MaxPoolingLayer(2, 2, type)
        y = layer.forward(x)
        assert y.dtype == np.float32 and layer.backward(y).dtype == np.float32
        with pytest.raises(stu._base.BackwardBeforeForwardError):
            MaxPoolingLayer(2, 2, type).backward(y)


# ---------------------------------------------------------------- flatten
def test_flatten_uses_hwc_order_and_backward_inverts(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    layer = FlattenLayer([3, 4, 5], [60])
    y = layer.forward(x)
    expect_shape("flatten output", y, (2, 60))
    # MatConvNet order: index (h, w, c) -> h*W*C + w*C + c
    expect_equal("flatten output (H, W, C order: y[n, h*W*C + w*C + c] = x[n, c, h, w])", y,
                 x.transpose(0, 2, 3, 1).reshape(2, -1))
    expect_equal("flatten backward (the inverse of forward)", layer.backward(y), x)
    check_vjp("flatten bottom_diff", layer.forward, layer.backward, x, threshold=THRESHOLD)
    with pytest.raises(ValueError, match="expected"):
        layer.forward(np.zeros((2, 5, 4, 3)))


# ----------------------------------------------------------------------------- given code
def test_constructor_sizes_must_be_whole_and_positive():
    with pytest.raises(ValueError, match="kernel_size must be a whole number >= 1, got 2.5"):
        ConvolutionalLayer(2.5, 3, 4, 1, 1)
    with pytest.raises(ValueError, match="padding must be a whole number >= 0"):
        ConvolutionalLayer(3, 3, 4, -1, 1)
    with pytest.raises(ValueError, match="MaxPoolingLayer: kernel_size must be a whole"):
        MaxPoolingLayer(0, 2)
    with pytest.raises(ValueError, match="MaxPoolingLayer: stride must be a whole"):
        MaxPoolingLayer(2, 1.5)
    with pytest.raises(ValueError, match="FlattenLayer: input_shape must be a whole"):
        FlattenLayer([2, 0, 3], [0])
    assert ConvolutionalLayer(3.0, 3, 4, 1, 1).kernel_size == 3


@pytest.mark.parametrize("type", [0, 1])
def test_integer_input_is_converted_to_float64(rng, type):
    conv = ConvolutionalLayer(3, 2, 3, 1, 1, type=type)
    conv.init_param(std=0.1, seed=2)
    x = rng.integers(0, 255, size=(1, 2, 5, 5)).astype(np.uint8)
    out = conv.forward(x)
    assert out.dtype == np.float64 and np.abs(out).max() > 0
    ref = ConvolutionalLayer(3, 2, 3, 1, 1, type=type)
    ref.load_param(conv.weight, conv.bias)
    np.testing.assert_allclose(out, ref.forward(x.astype(np.float64)), rtol=1e-12)
    assert MaxPoolingLayer(2, 2, type).forward(x).dtype == np.float64


@pytest.mark.parametrize("type", [0, 1])
def test_every_backward_checks_top_diff_shape(rng, type):
    x = rng.standard_normal((2, 3, 6, 6))
    conv = ConvolutionalLayer(3, 3, 4, 1, 1, type=type)
    conv.init_param()
    conv.forward(x)
    with pytest.raises(ValueError, match=r"ConvolutionalLayer.backward: top_diff has shape "
                                         r"\(2, 4, 5, 6\), expected \(2, 4, 6, 6\)"):
        conv.backward(rng.standard_normal((2, 4, 5, 6)))
    pool = MaxPoolingLayer(2, 2, type)
    pool.forward(x)
    with pytest.raises(ValueError, match=r"MaxPoolingLayer.backward: top_diff has shape"):
        pool.backward(rng.standard_normal((2, 3, 3, 2)))
    flat = FlattenLayer([3, 6, 6], [108])
    flat.forward(x)
    with pytest.raises(ValueError, match=r"FlattenLayer.backward: top_diff has shape"):
        flat.backward(rng.standard_normal((2, 107)))
