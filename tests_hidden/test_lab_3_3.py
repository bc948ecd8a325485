"""Exp 3.3 lab tests (hidden; staff only), through the original interface: the layers'
gradients (eqs. 3.5-3.9), the speed test's img2col layers against the definition, the losses
(eqs. 3.10-3.15), Adam (eq. 3.17) and the feature network (forward to named layers, backward
from one layer to the image, ``load_image -> (image, original_shape)``, ``save_image``,
``get_random_img`` on NumPy's global generator).

float64 throughout; ``init_param()`` before ``load_param()``; backward after forward on the
same arrays (the original's StyleLossLayer keeps its Gram matrices from forward). The
network test swaps the engine's convolution/pooling and a reference ReLU into the student's
network, so it credits only the network's own code (build, load, forward, backward order).
Every test checks a forward value before it credits a gradient; the network's backward is
checked along random directions with the forward compared with the reference at every point
used (``check_directional``), so a forward that answers probes from a cache fails.
"""
import os
import types

import numpy as np
import pytest

from labkit.engine.conv_algos import (conv2d_input_grad_reference, conv2d_reference,
                                      conv2d_weight_grad_reference)
from labkit.runtime.gradcheck import check_directional
from labkit.runtime.student import seed_numpy, stu, to_student
from lab_support import RefReLU, rel_err, deferred, unwrap

TOL = 1e-10


def conv_layer(k, cin, cout, p, s, w, b, type=0):
    layer = stu.layer_2.ConvolutionalLayer(k, cin, cout, p, s, type)
    layer.init_param()
    layer.load_param(w, b)
    return layer


def conv_case(seed, shape, k, cout):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape), rng.standard_normal((shape[1], k, k, cout)),
            rng.standard_normal(cout))


CONV_CASES = [((2, 3, 6, 7), 3, 4, 1, 1), ((1, 2, 7, 9), 3, 3, 0, 2)]


def check(name, got, ref, tol=TOL):
    assert np.shape(got) == np.shape(ref), f"{name}: shape {np.shape(got)}, expected {np.shape(ref)}"
    err = rel_err(got, ref)
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol:g}"


@pytest.mark.parametrize("shape,k,cout,p,s", CONV_CASES)
def test_conv_backward_raw(shape, k, cout, p, s):
    x, w, b = conv_case(41, shape, k, cout)
    layer = conv_layer(k, shape[1], cout, p, s, w, b, type=0)
    y = layer.forward(x)
    check("conv forward_raw (eq. 3.4)", y, conv2d_reference(x, w, b, p, s))
    dy = np.random.default_rng(42).standard_normal(np.shape(y))
    dx = layer.backward(dy.copy())
    check("conv backward_raw bottom_diff (eq. 3.6)", dx,
          conv2d_input_grad_reference(dy, w, p, s, x.shape))
    dw, db = conv2d_weight_grad_reference(x, dy, k, p, s)
    check("conv backward_raw d_weight (eq. 3.5)", layer.d_weight, dw)
    check("conv backward_raw d_bias (eq. 3.5)", np.ravel(layer.d_bias), db)


@pytest.mark.parametrize("shape,k,cout,p,s", CONV_CASES + [((1, 16, 12, 20), 3, 16, 1, 1)])
def test_conv_speedup(shape, k, cout, p, s):
    """type=1 (img2col): forward output and input gradient, the speed test's criteria,
    against the definition (weight gradients are not compared, as in the original)."""
    x, w, b = conv_case(43, shape, k, cout)
    layer = conv_layer(k, shape[1], cout, p, s, w, b, type=1)
    y = layer.forward(x)
    check("img2col conv forward", y, conv2d_reference(x, w, b, p, s))
    dy = np.random.default_rng(44).standard_normal(np.shape(y))
    check("img2col conv backward bottom_diff", layer.backward(dy.copy()),
          conv2d_input_grad_reference(dy, w, p, s, x.shape))


def ref_pool_grad(x, dy, k):
    """2x2/2-style non-overlapping pooling: each window's gradient to its (first) maximum."""
    n, c, h, w = x.shape
    ho, wo = dy.shape[2:]
    win = x[:, :, :ho * k, :wo * k].reshape(n, c, ho, k, wo, k).transpose(0, 1, 2, 4, 3, 5)
    flat = win.reshape(n, c, ho, wo, k * k)
    onehot = np.eye(k * k)[flat.argmax(axis=-1)] * dy[..., None]
    grad = onehot.reshape(n, c, ho, wo, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, ho * k, wo * k)
    out = np.zeros_like(x)
    out[:, :, :ho * k, :wo * k] = grad
    return out


@pytest.mark.parametrize("type", [0, 1])
def test_pool_backward(type):
    """Eq. 3.9 on the handout's 2x2/2 pooling (loops: backward_raw_book; type=1: speedup)."""
    rng = np.random.default_rng(45)
    x = rng.standard_normal((2, 3, 6, 8))
    layer = stu.layer_2.MaxPoolingLayer(2, 2, type)
    y = layer.forward(x)
    check(f"max-pool (type={type}) forward", y,
          x.reshape(2, 3, 3, 2, 4, 2).max(axis=(3, 5)))
    dy = rng.standard_normal(np.shape(y))
    check(f"max-pool (type={type}) bottom_diff", layer.backward(dy.copy()), ref_pool_grad(x, dy, 2))


def test_relu_backward():
    """dL/dX = dL/dY where X > 0, 0 where X < 0; at X == 0 either subgradient is accepted."""
    rng = np.random.default_rng(46)
    x = rng.standard_normal((3, 4, 5))
    x[0, 0, :3] = 0.0
    relu = stu.layer_1.ReLULayer()
    check("ReLU forward", relu.forward(x), np.maximum(x, 0), 1e-15)
    dy = rng.standard_normal(x.shape)
    dx = np.asarray(relu.backward(dy.copy()))
    assert dx.shape == x.shape
    assert np.array_equal(dx[x > 0], dy[x > 0]) and np.all(dx[x < 0] == 0)
    zero = x == 0
    assert np.all((dx[zero] == 0) | (dx[zero] == dy[zero])), "ReLU gradient at 0: use 0 or dL/dY"


def test_content_loss():
    rng = np.random.default_rng(47)
    x, y = rng.standard_normal((1, 4, 5, 6)), rng.standard_normal((1, 4, 5, 6))
    layer = stu.layer_3.ContentLossLayer()
    loss = float(layer.forward(x, y))
    assert abs(loss - np.sum((x - y) ** 2) / (2 * x.size)) < 1e-12 * abs(loss), "eq. 3.10"
    check("content loss gradient (eq. 3.11)", layer.backward(x, y), (x - y) / x.size)


def test_style_loss():
    rng = np.random.default_rng(48)
    x, a = rng.standard_normal((1, 4, 5, 6)), rng.standard_normal((1, 4, 5, 6))
    n, c, h, w = x.shape
    fx, fa = x.reshape(n, c, -1), a.reshape(n, c, -1)
    g, ga = fx @ fx.transpose(0, 2, 1), fa @ fa.transpose(0, 2, 1)
    layer = stu.layer_3.StyleLossLayer()
    loss = float(layer.forward(x, a))
    expect = np.sum((g - ga) ** 2) / (4 * n * c ** 2 * h ** 2 * w ** 2)
    assert abs(loss - expect) < 1e-10 * expect, f"style loss {loss:.6g}, expected {expect:.6g} (eq. 3.13)"
    grad = ((g - ga).transpose(0, 2, 1) @ fx).reshape(x.shape) / (n * c ** 2 * h ** 2 * w ** 2)
    check("style loss gradient (eq. 3.15)", layer.backward(x, a), grad)


def test_adam():
    rng = np.random.default_rng(49)
    shape = (1, 3, 4, 5)
    adam = stu.layer_3.AdamOptimizer(0.5, list(shape))
    x = rng.standard_normal(shape)
    m = v = np.zeros(shape)
    expect = x.copy()
    for t in range(1, 4):
        g = rng.standard_normal(shape)
        x = adam.update(x, g)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        expect = expect - 0.5 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        check(f"Adam step {t} (eq. 3.17)", x, expect, 1e-9)


@pytest.fixture(scope="module")
def feature_net(full_fixture):
    return deferred(_feature_net, full_fixture)   # handed to the tests (unwrap)


def _feature_net(full_fixture):
    from labkit.engine.attach import tune
    vgg = stu.style_transfer.VGG19(param_path=full_fixture["mat"])
    if hasattr(vgg, "dtype"):             # this kit's extension: keep float64 (the original's)
        vgg.dtype = np.dtype(np.float64)
    vgg.build_model()
    vgg.init_model()
    vgg.load_model()
    # the engine's layers (made from the student's loaded weights) and reference ReLUs put
    # into the student's network; graded in the sandbox they run in this process, called
    # by the student's forward/backward in the worker (to_student)
    # (no conv + ReLU fusion: each ReLU's own backward must run, so a network backward that
    # skips a layer is caught)
    net = types.SimpleNamespace(layers=dict(vgg.layers))
    tune(net, method="img2col", need_param_grad=False, fuse_relu=False)
    ours = set(net._untuned_layers)
    for name in list(net.layers):
        if name.startswith("relu"):
            net.layers[name] = RefReLU()
            ours.add(name)
    vgg.layers = {name: to_student(layer) if name in ours else layer
                  for name, layer in net.layers.items()}
    return vgg


def test_feature_network_forward_backward(feature_net, full_fixture, tmp_path):
    vgg = unwrap(feature_net)
    image, shape = vgg.load_image(full_fixture["image"], 32, 48)
    assert np.shape(image) == (1, 3, 32, 48) and tuple(shape)[:2] == (300, 400)
    rng = np.random.default_rng(50)
    # noise breaks the ties of flat image regions (max-pool is not differentiable at a tie)
    x = np.asarray(image, dtype=np.float64) + rng.standard_normal(np.shape(image))
    feats = vgg.forward(x, ["relu1_1", "relu3_1"])
    assert set(feats) >= {"relu1_1", "relu3_1"}
    assert np.shape(feats["relu3_1"])[1:] == (256, 8, 12)
    # the reference: the same weights from the file, the definition of each layer
    from labkit.runtime.matfile import load_vgg19_mat
    weights = load_vgg19_mat(full_fixture["mat"])
    layers = weights.layers[:weights.layers.index(weights.layer("relu3_1")) + 1]

    def reference(z):
        for layer in layers:
            if layer.type == "conv":
                z = conv2d_reference(z, np.transpose(layer.weight, [2, 0, 1, 3]).astype(np.float64),
                                     layer.bias.reshape(-1).astype(np.float64), 1, 1)
            elif layer.type == "relu":
                z = np.maximum(z, 0)
            else:
                n, c, h, w = z.shape
                z = z.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        return z
    check("features of relu3_1", feats["relu3_1"], reference(x), 1e-5)
    # backward from relu3_1: directional derivatives of <features, dloss>, the forward
    # checked against the reference at every point used (no answer from a cache)
    dloss = rng.standard_normal(np.shape(feats["relu3_1"]))
    grad = np.asarray(vgg.backward(dloss.copy(), "relu3_1"))
    assert grad.shape == x.shape
    check_directional("backward to the image", lambda z: vgg.forward(z, ["relu3_1"])["relu3_1"],
                      grad, x, dloss, directions=2, eps=1e-5, seed=51, threshold=1e-5,
                      reference=reference, forward_threshold=1e-9)
    # save_image resizes back to the picture's shape
    out = str(tmp_path / "out.jpg")
    vgg.save_image(x, shape, out)
    from PIL import Image
    with Image.open(out) as im:
        assert im.size == (400, 300)


def test_get_random_img_uses_numpys_global_generator():
    content = np.random.default_rng(51).standard_normal((1, 3, 6, 8)) * 50
    get_random_img = stu.style_transfer.get_random_img
    seed_numpy(1234)        # here and, graded in the sandbox, in the student's process
    a = get_random_img(content, 0.5)
    np.random.seed(1234)
    expect = np.random.uniform(-20, 20, content.shape) * 0.5 + content * 0.5
    check("get_random_img after np.random.seed(1234)", a, expect, 1e-6)
