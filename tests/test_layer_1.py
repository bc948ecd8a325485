"""stu_upload/layer_1.py: fully connected, ReLU, softmax loss (float64 gradient checks).

Student code comes from the ``stu`` fixture (tests/conftest.py): the real modules in the kit,
proxies to a sandboxed worker when staff grade. Arrays read from a student object
(``fc.weight``) are copies when sandboxed: change a parameter by assigning it.
Expected values are recorded from the reference (tests/data/layer_1.npz); every gradient
check also compares the forward values, so layers that return zeros of the right shape fail.
"""
import numpy as np
import pytest

from labkit.runtime.compare import expect, expect_close
from labkit.runtime.gradcheck import GradientCheckError, check_vjp, numeric_gradient, assert_close
from labkit.runtime.recorded import Recorded

THRESHOLD = 1e-7
# expected values recorded from the reference solution (tests/data/layer_1.npz)
REC = Recorded("layer_1")


def recorded_fc(stu, case):
    d = REC[case]
    fc = stu.layer_1.FullyConnectedLayer(*d["w"].shape)
    fc.load_param(d["w"], d["b"])
    return fc, d


def param_loss(layer, name, value, x, dy):
    """``lambda: sum(layer.forward(x) * dy)`` with ``layer.<name> = value`` set first (the
    numeric gradient changes ``value`` in place)."""
    def loss():
        setattr(layer, name, value)
        return float(np.sum(layer.forward(x) * dy))
    return loss


@pytest.mark.parametrize("batch", [1, 4])
def test_fc_forward_formula(stu, batch):
    fc, d = recorded_fc(stu, f"fc/batch{batch}")
    assert_close("fc output", fc.forward(d["x"]), d["y"], 1e-12)


@pytest.mark.parametrize("batch", [1, 3])
def test_fc_gradients(stu, batch):
    fc, d = recorded_fc(stu, f"fc/batch{batch}")
    x, dy = d["x"], d["dy"]
    assert_close("fc output", fc.forward(x), d["y"], 1e-12)
    assert_close("fc bottom_diff", fc.backward(dy), d["dx"], 1e-12)
    d_weight, d_bias = fc.d_weight, fc.d_bias
    assert_close("fc d_weight", d_weight, d["dw"], 1e-12)
    assert_close("fc d_bias", np.reshape(d_bias, -1), np.reshape(d["db"], -1), 1e-12)
    check_vjp("fc bottom_diff", fc.forward, fc.backward, x, dy, threshold=THRESHOLD)
    weight, bias = fc.weight, fc.bias
    assert_close("fc d_weight", d_weight,
                 numeric_gradient(param_loss(fc, "weight", weight, x, dy), weight), THRESHOLD)
    fc.weight = weight
    assert_close("fc d_bias", np.reshape(d_bias, np.shape(bias)),
                 numeric_gradient(param_loss(fc, "bias", bias, x, dy), bias), THRESHOLD)


def test_relu_gradient(stu):
    d = REC["relu/0"]
    relu = stu.layer_1.ReLULayer()
    assert_close("relu output", relu.forward(d["x"]), d["y"], 1e-15)
    dx = relu.backward(d["dy"])
    at_zero = d["x"] == 0               # either subgradient (0 or dy) is right at exactly 0
    assert_close("relu bottom_diff", np.where(at_zero, 0, dx), np.where(at_zero, 0, d["dx"]),
                 1e-15)
    expect(np.all((dx[at_zero] == 0) | (dx[at_zero] == d["dy"][at_zero])),
           "relu bottom_diff at X == 0: use 0 or dL/dY")
    x = d["x"] + np.where(at_zero, 0.5, 0.0)      # no kink for the numerical check
    check_vjp("relu bottom_diff", relu.forward, relu.backward, x, threshold=THRESHOLD)


def test_softmax_probabilities_and_stability(stu):
    sm = stu.layer_1.SoftmaxLossLayer()
    d = REC["softmax/0"]
    assert_close("softmax probabilities", sm.forward(d["x"]), d["prob"], 1e-12)
    big = sm.forward(REC["softmax/big"]["x"])
    expect_close(f"softmax probabilities of large scores (up to "
                 f"{np.abs(REC['softmax/big']['x']).max():.0f})", big,
                 REC["softmax/big"]["prob"], 1e-12,
                 hint="exp of a large score overflows to inf (inf / inf is nan)")


@pytest.mark.parametrize("case", ["softmax/0", "softmax/1"])
def test_softmax_loss_gradient(stu, case):
    d = REC[case]
    sm = stu.layer_1.SoftmaxLossLayer()
    x, label = d["x"].copy(), d["label"]

    def loss():
        sm.forward(x)
        return sm.get_loss(label)

    expect_close("softmax loss (mean cross-entropy)", loss(), d["loss"], 1e-12)
    assert_close("softmax bottom_diff", sm.backward(), d["dx"], 1e-12)
    numeric = numeric_gradient(loss, x)
    loss()
    assert_close("softmax bottom_diff", sm.backward(), numeric, THRESHOLD)


def test_negative_control_wrong_gradient_fails(rng):
    """A gradient check that cannot fail proves nothing: for f(x) = x**3 the gradient
    2 x**2 * dy (a wrong power rule) must be caught, and 3 x**2 * dy must pass."""
    x = rng.standard_normal((2, 6))
    check_vjp("x**3", lambda v: v ** 3, lambda dy: 3 * x ** 2 * dy, x, threshold=THRESHOLD)
    with pytest.raises(GradientCheckError, match=r"relative error .* threshold"):
        check_vjp("x**3", lambda v: v ** 3, lambda dy: 2 * x ** 2 * dy, x, threshold=THRESHOLD)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keep_dtype(stu, dtype):
    """The dtype is kept, and the values are right (zeros of the right dtype do not pass)."""
    fc, d = recorded_fc(stu, "fc/batch3")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    y = fc.forward(d["x"].astype(dtype))
    assert y.dtype == dtype
    assert_close("fc forward", y, d["y"], tol)
    dx = fc.backward(d["dy"].astype(dtype))
    assert dx.dtype == dtype
    assert_close("fc bottom_diff", dx, d["dx"], tol)
    r = REC["relu/0"]
    relu = stu.layer_1.ReLULayer()
    y = relu.forward(r["x"].astype(dtype))
    assert y.dtype == dtype
    assert_close("relu forward", y, r["y"], tol)
    assert relu.backward(r["dy"].astype(dtype)).dtype == dtype
    s = REC["softmax/0"]
    p = stu.layer_1.SoftmaxLossLayer().forward(s["x"].astype(dtype))
    assert p.dtype == dtype
    assert_close("softmax forward", p, s["prob"], tol)


def test_backward_before_forward_is_a_clear_error(stu):
    error = stu._base.BackwardBeforeForwardError
    for layer in (stu.layer_1.FullyConnectedLayer(3, 2), stu.layer_1.ReLULayer()):
        with pytest.raises(error, match="before forward"):
            layer.backward(np.zeros((1, 2)))
    with pytest.raises(error, match="before forward"):
        stu.layer_1.SoftmaxLossLayer().backward()


def test_load_param_checks_shapes(stu):
    fc = stu.layer_1.FullyConnectedLayer(4, 3)
    with pytest.raises(ValueError, match=r"weight has shape \(3, 4\), expected \(4, 3\)"):
        fc.load_param(np.zeros((3, 4)), np.zeros(3))
    fc.load_param(np.zeros((4, 3)), np.zeros(3))       # a flat bias is accepted
    assert np.shape(fc.bias) == (1, 3)


# ----------------------------------------------------------------------------- given code
def test_integer_input_is_converted_to_float64(stu):
    """A uint8 image straight from Pillow must not cast the weights to integers."""
    d = REC["fc/batch3"]
    fc = stu.layer_1.FullyConnectedLayer(*d["w"].shape)
    fc.load_param(d["w"], d["b"])
    x = np.arange(d["x"].size).reshape(d["x"].shape).astype(np.uint8)
    want = fc.forward(x.astype(np.float64))
    out = fc.forward(x)
    assert out.dtype == np.float64 and np.abs(out).max() > 0
    assert_close("fc forward of uint8 input", out, want, 1e-12)
    assert stu.layer_1.ReLULayer().forward(np.array([[-2, 3]])).dtype == np.float64


def test_constructor_sizes_must_be_whole_and_positive(stu):
    for bad in (2.5, 0, -1, "3", None, True):
        with pytest.raises(ValueError, match="FullyConnectedLayer: num_input must be a whole"):
            stu.layer_1.FullyConnectedLayer(bad, 3)
    assert stu.layer_1.FullyConnectedLayer(4.0, np.int64(3)).num_input == 4


def test_backward_checks_top_diff_shape(stu, rng):
    fc = stu.layer_1.FullyConnectedLayer(4, 3)
    fc.init_param()
    fc.forward(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match=r"top_diff has shape \(2, 4\), expected \(2, 3\)"):
        fc.backward(rng.standard_normal((2, 4)))
    relu = stu.layer_1.ReLULayer()
    relu.forward(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match=r"ReLULayer.backward: top_diff has shape"):
        relu.backward(rng.standard_normal((4, 2)))


@pytest.mark.parametrize("label, message", [([0, -1], "label -1 is not a class index"),
                                            ([0, 3], "label 3 is not a class index in \\[0, 2\\]"),
                                            ([0.5, 1], "whole class indices"),
                                            (["a", "b"], "whole class indices"),
                                            ([0], "1 labels for a batch of 2")])
def test_softmax_labels_are_checked(stu, rng, label, message):
    layer = stu.layer_1.SoftmaxLossLayer()
    layer.forward(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError, match=message):
        layer.get_loss(np.array(label))
    assert layer.get_loss(np.array([2.0, 0.0])) > 0        # whole floats are fine
