"""stu_upload/layer_1.py: fully connected, ReLU, softmax loss (float64 gradient checks)."""
import numpy as np
import pytest

from labkit.runtime.gradcheck import GradientCheckError, check_vjp, numeric_gradient, assert_close
from labkit.runtime.recorded import Recorded
from labkit.runtime.student import lazy, stu

FullyConnectedLayer, ReLULayer, SoftmaxLossLayer = lazy(
    "layer_1", "FullyConnectedLayer", "ReLULayer", "SoftmaxLossLayer")

THRESHOLD = 1e-7
# expected values recorded from the reference solution (tests/data/layer_1.npz)
REC = Recorded("layer_1")


def make_fc(rng, n_in=7, n_out=5):
    fc = FullyConnectedLayer(n_in, n_out)
    fc.load_param(rng.standard_normal((n_in, n_out)), rng.standard_normal((1, n_out)))
    return fc


def recorded_fc(case):
    d = REC[case]
    fc = FullyConnectedLayer(*d["w"].shape)
    fc.load_param(d["w"], d["b"])
    return fc, d


@pytest.mark.parametrize("batch", [1, 4])
def test_fc_forward_formula(batch):
    fc, d = recorded_fc(f"fc/batch{batch}")
    assert_close("fc output", fc.forward(d["x"]), d["y"], 1e-12)


@pytest.mark.parametrize("batch", [1, 3])
def test_fc_gradients(batch):
    fc, d = recorded_fc(f"fc/batch{batch}")
    x, dy = d["x"], d["dy"]
    assert_close("fc output", fc.forward(x), d["y"], 1e-12)
    assert_close("fc bottom_diff", fc.backward(dy), d["dx"], 1e-12)
    assert_close("fc d_weight", fc.d_weight, d["dw"], 1e-12)
    assert_close("fc d_bias", np.reshape(fc.d_bias, -1), np.reshape(d["db"], -1), 1e-12)
    check_vjp("fc bottom_diff", fc.forward, fc.backward, x, dy, threshold=THRESHOLD)
    fc.forward(x)
    fc.backward(dy)
    loss = lambda: float(np.sum(fc.forward(x) * dy))
    assert_close("fc d_weight", fc.d_weight, numeric_gradient(loss, fc.weight), THRESHOLD)
    assert_close("fc d_bias", fc.d_bias, numeric_gradient(loss, fc.bias), THRESHOLD)


def test_relu_gradient():
    d = REC["relu/0"]
    relu = ReLULayer()
    assert_close("relu output", relu.forward(d["x"]), d["y"], 1e-15)
    dx = relu.backward(d["dy"])
    at_zero = d["x"] == 0               # either subgradient (0 or dy) is right at exactly 0
    assert_close("relu bottom_diff", np.where(at_zero, 0, dx), np.where(at_zero, 0, d["dx"]),
                 1e-15)
    assert np.all((dx[at_zero] == 0) | (dx[at_zero] == d["dy"][at_zero]))
    x = d["x"] + np.where(at_zero, 0.5, 0.0)      # no kink for the numerical check
    check_vjp("relu bottom_diff", relu.forward, relu.backward, x, threshold=THRESHOLD)


def test_softmax_probabilities_and_stability():
    sm = SoftmaxLossLayer()
    d = REC["softmax/0"]
    assert_close("softmax probabilities", sm.forward(d["x"]), d["prob"], 1e-12)
    big = sm.forward(REC["softmax/big"]["x"])
    assert np.all(np.isfinite(big)) and np.isclose(big.sum(), 1.0)
    assert_close("softmax of large scores", big, REC["softmax/big"]["prob"], 1e-12)


@pytest.mark.parametrize("case", ["softmax/0", "softmax/1"])
def test_softmax_loss_gradient(case):
    d = REC[case]
    sm = SoftmaxLossLayer()
    x, label = d["x"].copy(), d["label"]

    def loss():
        sm.forward(x)
        return sm.get_loss(label)

    assert np.isclose(loss(), float(d["loss"]), rtol=1e-12), "softmax loss differs"
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
def test_layers_keep_dtype(rng, dtype):
    fc = make_fc(rng)
    x = rng.standard_normal((2, 7)).astype(dtype)
    assert fc.forward(x).dtype == dtype
    assert fc.backward(np.ones((2, 5), dtype)).dtype == dtype
    relu = ReLULayer()
    assert relu.forward(x).dtype == dtype
    assert relu.backward(x).dtype == dtype
    assert SoftmaxLossLayer().forward(x).dtype == dtype


def test_backward_before_forward_is_a_clear_error():
    for layer in (FullyConnectedLayer(3, 2), ReLULayer()):
        with pytest.raises(stu._base.BackwardBeforeForwardError, match="before forward"):
            layer.backward(np.zeros((1, 2)))
    with pytest.raises(stu._base.BackwardBeforeForwardError, match="before forward"):
        SoftmaxLossLayer().backward()


def test_load_param_checks_shapes():
    fc = FullyConnectedLayer(4, 3)
    with pytest.raises(ValueError, match=r"weight has shape \(3, 4\), expected \(4, 3\)"):
        fc.load_param(np.zeros((3, 4)), np.zeros(3))
    fc.load_param(np.zeros((4, 3)), np.zeros(3))       # a flat bias is accepted
    assert fc.bias.shape == (1, 3)


# ----------------------------------------------------------------------------- given code
def test_integer_input_is_converted_to_float64(rng):
    """A uint8 image straight from Pillow must not cast the weights to integers."""
    fc = FullyConnectedLayer(6, 3)
    fc.init_param(std=0.1, seed=1)
    x = rng.integers(0, 255, size=(2, 6)).astype(np.uint8)
    out = fc.forward(x)
    assert out.dtype == np.float64 and np.abs(out).max() > 0
    np.testing.assert_allclose(out, x.astype(np.float64) @ fc.weight + fc.bias, rtol=1e-12)
    assert ReLULayer().forward(np.array([[-2, 3]])).dtype == np.float64


def test_constructor_sizes_must_be_whole_and_positive():
    for bad in (2.5, 0, -1, "3", None, True):
        with pytest.raises(ValueError, match="FullyConnectedLayer: num_input must be a whole"):
            FullyConnectedLayer(bad, 3)
    assert FullyConnectedLayer(4.0, np.int64(3)).num_input == 4


def test_backward_checks_top_diff_shape(rng):
    fc = FullyConnectedLayer(4, 3)
    fc.init_param()
    fc.forward(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match=r"top_diff has shape \(2, 4\), expected \(2, 3\)"):
        fc.backward(rng.standard_normal((2, 4)))
    relu = ReLULayer()
    relu.forward(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match=r"ReLULayer.backward: top_diff has shape"):
        relu.backward(rng.standard_normal((4, 2)))


@pytest.mark.parametrize("label, message", [([0, -1], "label -1 is not a class index"),
                                            ([0, 3], "label 3 is not a class index in \\[0, 2\\]"),
                                            ([0.5, 1], "whole class indices"),
                                            (["a", "b"], "whole class indices"),
                                            ([0], "1 labels for a batch of 2")])
def test_softmax_labels_are_checked(rng, label, message):
    layer = SoftmaxLossLayer()
    layer.forward(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError, match=message):
        layer.get_loss(np.array(label))
    assert layer.get_loss(np.array([2.0, 0.0])) > 0        # whole floats are fine
