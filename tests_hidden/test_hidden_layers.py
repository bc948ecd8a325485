"""Hidden tests: cases the public tests do not show (run with --hidden tests_hidden).

Every gradient is credited only after a forward value is checked, and the numeric checks
compare the forward with a reference at every probe point (``check_vjp(reference=...)``):
a forward that answers probes from a cache of recent inputs fails."""
import numpy as np

from labkit.engine.conv_algos import conv2d_reference
from labkit.runtime.gradcheck import assert_close, check_vjp
from labkit.runtime.student import stu


def FullyConnectedLayer(*args):
    return stu.layer_1.FullyConnectedLayer(*args)


def ReLULayer():
    return stu.layer_1.ReLULayer()


def SoftmaxLossLayer():
    return stu.layer_1.SoftmaxLossLayer()


def ConvolutionalLayer(*args, **kwargs):
    return stu.layer_2.ConvolutionalLayer(*args, **kwargs)


def test_fc_wide_batch_gradient(rng):
    fc = FullyConnectedLayer(3, 9)
    w, b = rng.standard_normal((3, 9)), rng.standard_normal((1, 9))
    fc.load_param(w, b)
    x = rng.standard_normal((6, 3))
    assert_close("fc forward", fc.forward(x), x @ w + b, 1e-12)     # zeros do not pass
    check_vjp("fc bottom_diff", fc.forward, fc.backward, x, reference=lambda v: v @ w + b)


def test_relu_negative_input_has_zero_gradient(rng):
    relu = ReLULayer()
    x = -np.abs(rng.standard_normal((2, 3))) - 0.1
    x[0, 0] = 0.5                                   # one positive entry: zeros do not pass
    assert np.array_equal(relu.forward(x), np.where(x > 0, x, 0))
    expected = np.zeros_like(x)
    expected[0, 0] = 1.0
    assert np.array_equal(relu.backward(np.ones_like(x)), expected)


def test_softmax_backward_is_averaged_over_the_batch(rng):
    sm = SoftmaxLossLayer()
    x = rng.standard_normal((5, 4))
    label = np.array([0, 1, 2, 3, 0])
    prob = sm.forward(x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    assert_close("softmax forward", prob, e / e.sum(axis=1, keepdims=True), 1e-12)
    sm.get_loss(label)
    expected = (prob - np.eye(4)[label]) / 5
    assert_close("softmax bottom_diff", sm.backward(), expected, 1e-12)


def test_conv_img2col_stride_larger_than_kernel(rng):
    layer = ConvolutionalLayer(2, 2, 3, 0, 3, type=1)
    w, b = rng.standard_normal((2, 2, 2, 3)), rng.standard_normal(3)
    layer.load_param(w, b)
    x = rng.standard_normal((1, 2, 8, 8))

    def reference(v):
        return conv2d_reference(v, w, b, 0, 3)
    assert_close("conv forward", layer.forward(x), reference(x), 1e-12)
    check_vjp("conv bottom_diff", layer.forward, layer.backward, x, reference=reference)
