"""stu_upload/layer_1.py: fully connected, ReLU, softmax loss (float64 gradient checks).

Student code comes from the ``stu`` fixture (tests/conftest.py): the real modules in the kit,
proxies to a sandboxed worker when staff grade. Arrays read from a student object
(``fc.weight``) are copies when sandboxed: change a parameter by assigning it.
Every gradient check also compares the forward values with the formula, so layers that
return zeros of the right shape do not pass."""
import numpy as np
import pytest

from labkit.runtime.gradcheck import GradientCheckError, check_vjp, numeric_gradient, assert_close
THRESHOLD = 1e-7


def make_fc(stu, rng, n_in=7, n_out=5):
    fc = stu.layer_1.FullyConnectedLayer(n_in, n_out)
    fc.load_param(rng.standard_normal((n_in, n_out)), rng.standard_normal((1, n_out)))
    return fc


def param_loss(layer, name, value, x, dy):
    """``lambda: sum(layer.forward(x) * dy)`` with ``layer.<name> = value`` set first (the
    numeric gradient changes ``value`` in place)."""
    def loss():
        setattr(layer, name, value)
        return float(np.sum(layer.forward(x) * dy))
    return loss


@pytest.mark.parametrize("batch", [1, 4])
def test_fc_forward_formula(stu, rng, batch):
    fc = make_fc(stu, rng)
    x = rng.standard_normal((batch, 7))
    assert np.allclose(fc.forward(x), x @ fc.weight + fc.bias, rtol=1e-12)


@pytest.mark.parametrize("batch", [1, 3])
def test_fc_gradients(stu, rng, batch):
    fc = make_fc(stu, rng)
    x = rng.standard_normal((batch, 7))
    dy = rng.standard_normal((batch, 5))
    weight, bias = fc.weight, fc.bias
    assert_close("fc forward", fc.forward(x), x @ weight + bias, 1e-12)
    check_vjp("fc bottom_diff", fc.forward, fc.backward, x, dy, threshold=THRESHOLD)
    fc.forward(x)
    fc.backward(dy)
    d_weight, d_bias = fc.d_weight, fc.d_bias
    assert_close("fc d_weight", d_weight,
                 numeric_gradient(param_loss(fc, "weight", weight, x, dy), weight), THRESHOLD)
    fc.weight = weight
    assert_close("fc d_bias", d_bias,
                 numeric_gradient(param_loss(fc, "bias", bias, x, dy), bias), THRESHOLD)


def test_relu_gradient(stu, rng):
    relu = stu.layer_1.ReLULayer()
    x = rng.standard_normal((3, 4, 5))
    y = relu.forward(x)
    assert np.array_equal(y, np.where(x > 0, x, 0))
    check_vjp("relu bottom_diff", relu.forward, relu.backward, x, threshold=THRESHOLD)


def test_softmax_probabilities_and_stability(stu, rng):
    sm = stu.layer_1.SoftmaxLossLayer()
    x = rng.standard_normal((4, 6)) * 3
    p = sm.forward(x)
    ref = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    assert np.allclose(p, ref, rtol=1e-12)
    big = sm.forward(np.array([[1000.0, 999.0, -1000.0]]))
    assert np.all(np.isfinite(big)) and np.isclose(big.sum(), 1.0)


def test_softmax_loss_gradient(stu, rng):
    sm = stu.layer_1.SoftmaxLossLayer()
    x = rng.standard_normal((4, 6))
    label = np.array([0, 5, 2, 2])

    def loss():
        sm.forward(x)
        return sm.get_loss(label)

    prob = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    assert_close("softmax forward", sm.forward(x), prob, 1e-12)
    expected = -np.mean(np.log(prob[np.arange(4), label]))
    assert np.isclose(loss(), expected, rtol=1e-12)
    numeric = numeric_gradient(loss, x)
    loss()
    assert_close("softmax bottom_diff", sm.backward(), numeric, THRESHOLD)


def test_negative_control_wrong_fc_gradient_fails(rng):
    """A gradient check that cannot fail proves nothing: a transposed-weight bug is caught
    (on the formula y = x W + b itself, so no student code can make this test pass)."""
    weight, bias = rng.standard_normal((6, 6)), rng.standard_normal((1, 6))
    x = rng.standard_normal((2, 6))
    forward = lambda x: x @ weight + bias
    check_vjp("fc bottom_diff", forward, lambda dy: dy @ weight.T, x, threshold=THRESHOLD)
    wrong = lambda dy: dy @ weight             # should be dy @ weight.T
    with pytest.raises(GradientCheckError, match=r"relative error .* threshold"):
        check_vjp("fc bottom_diff", forward, wrong, x, threshold=THRESHOLD)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keep_dtype(stu, rng, dtype):
    """The dtype is kept, and the values are right (zeros of the right dtype do not pass)."""
    fc = make_fc(stu, rng)
    x = rng.standard_normal((2, 7)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    y = fc.forward(x)
    weight = fc.weight
    assert y.dtype == dtype
    assert_close("fc forward", y, x.astype(np.float64) @ weight + fc.bias, tol)
    dx = fc.backward(np.ones((2, 5), dtype))
    assert dx.dtype == dtype
    assert_close("fc bottom_diff", dx, np.ones((2, 5)) @ weight.T, tol)
    relu = stu.layer_1.ReLULayer()
    assert relu.forward(x).dtype == dtype
    r = relu.backward(x)
    assert r.dtype == dtype
    assert_close("relu bottom_diff", r, np.where(x > 0, x, 0), tol)
    p = stu.layer_1.SoftmaxLossLayer().forward(x)
    assert p.dtype == dtype
    assert_close("softmax forward", p, np.exp(x) / np.exp(x).sum(axis=1, keepdims=True),
                 tol)


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
    assert fc.bias.shape == (1, 3)
