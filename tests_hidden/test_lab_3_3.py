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
from labkit.runtime import nofollow
from labkit.runtime.gradcheck import check_directional
from labkit.runtime.compare import expect, expect_close, expect_shape
from labkit.runtime.student import seed_numpy, stu, student_folder, to_student
from lab_support import RefReLU, deferred, file_weights, unwrap

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


def check(name, got, ref, tol=TOL, equation=""):
    """yours vs expected at the worst index, relative to the expected values' scale."""
    expect_close(name, got, ref, rtol=tol, equation=equation)


@pytest.mark.parametrize("shape,k,cout,p,s", CONV_CASES)
def test_conv_backward_raw(shape, k, cout, p, s):
    x, w, b = conv_case(41, shape, k, cout)
    layer = conv_layer(k, shape[1], cout, p, s, w, b, type=0)
    y = layer.forward(x)
    check("conv forward_raw output Y", y, conv2d_reference(x, w, b, p, s), equation="eq. 3.3")
    dy = np.random.default_rng(42).standard_normal(np.shape(y))
    dx = layer.backward(dy.copy())
    check("conv backward_raw bottom_diff dL/dX", dx,
          conv2d_input_grad_reference(dy, w, p, s, x.shape), equation="eqs. 3.5-3.6")
    dw, db = conv2d_weight_grad_reference(x, dy, k, p, s)
    check("conv backward_raw d_weight dL/dW", layer.d_weight, dw, equation="eq. 3.5")
    check("conv backward_raw d_bias dL/db", np.ravel(layer.d_bias), db, equation="eq. 3.5")


@pytest.mark.parametrize("shape,k,cout,p,s", CONV_CASES + [((1, 16, 12, 20), 3, 16, 1, 1)])
def test_conv_speedup(shape, k, cout, p, s):
    """type=1 (img2col): forward output and input gradient, the speed test's criteria,
    against the definition (weight gradients are not compared, as in the original)."""
    x, w, b = conv_case(43, shape, k, cout)
    layer = conv_layer(k, shape[1], cout, p, s, w, b, type=1)
    y = layer.forward(x)
    check("img2col conv forward output Y", y, conv2d_reference(x, w, b, p, s),
          equation="eq. 3.3")
    dy = np.random.default_rng(44).standard_normal(np.shape(y))
    check("img2col conv backward bottom_diff dL/dX", layer.backward(dy.copy()),
          conv2d_input_grad_reference(dy, w, p, s, x.shape), equation="eqs. 3.5-3.6")


def ref_pool(x, k, s):
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = x[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3))
    return out


def ref_pool_grad(x, dy, k, s):
    """Eqs. 3.8-3.9 by loops: each window's gradient to its (first) maximum, added where
    windows overlap (stride < kernel)."""
    out = np.zeros_like(x)
    n, c, ho, wo = dy.shape
    for b in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    win = x[b, ch, i * s:i * s + k, j * s:j * s + k]
                    q0, q1 = np.unravel_index(int(np.argmax(win)), win.shape)
                    out[b, ch, i * s + q0, j * s + q1] += dy[b, ch, i, j]
    return out


# (kernel, stride, input shape): the handout's 2x2/2 with N = 2, odd sizes (floor rule),
# overlapping windows (stride < kernel: gradients add up), stride > kernel, non-square
POOL_CASES = [(2, 2, (2, 3, 6, 8)), (3, 2, (2, 2, 7, 9)), (2, 1, (1, 2, 5, 6)),
              (2, 3, (2, 1, 8, 7))]


@pytest.mark.parametrize("type", [0, 1])
@pytest.mark.parametrize("k,s,shape", POOL_CASES)
def test_pool_backward(type, k, s, shape):
    """Eqs. 3.7-3.9 (loops: backward_raw_book; type=1: speedup): forward first, then the
    gradient to each window's maximum, added where windows overlap."""
    rng = np.random.default_rng(45)
    x = rng.standard_normal(shape)
    layer = stu.layer_2.MaxPoolingLayer(k, s, type)
    y = layer.forward(x)
    check(f"max-pool {k}x{k}/{s} (type={type}) forward output Y", y, ref_pool(x, k, s),
          equation="eq. 3.7")
    dy = rng.standard_normal(np.shape(y))
    check(f"max-pool {k}x{k}/{s} (type={type}) bottom_diff dL/dX", layer.backward(dy.copy()),
          ref_pool_grad(x, dy, k, s), equation="eqs. 3.8-3.9")


@pytest.mark.parametrize("type", [0, 1])
def test_pool_backward_ties_after_relu(type):
    """After a ReLU, whole 2x2 windows are 0: each window's gradient must go to one of its
    maxima, once (eq. 3.9 names one position p), not to every tied maximum."""
    rng = np.random.default_rng(52)
    x = np.maximum(rng.standard_normal((2, 3, 6, 8)), 0)
    x[:, :, :2, :4] = 0.0                               # all-zero windows
    x[0, 0, 2:4, 0:2] = [[1.5, 1.5], [0.2, 1.5]]        # a tie among positive values
    layer = stu.layer_2.MaxPoolingLayer(2, 2, type)
    y = layer.forward(x)
    check(f"max-pool 2x2/2 (type={type}) forward output Y", y, ref_pool(x, 2, 2),
          equation="eq. 3.7")
    dy = rng.uniform(0.5, 1.5, np.shape(y))
    dx = np.asarray(layer.backward(dy.copy()), dtype=np.float64)
    expect_shape("max-pool bottom_diff dL/dX", dx, x.shape)
    n, c, ho, wo = dy.shape
    win = lambda a: a.reshape(n, c, ho, 2, wo, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, ho, wo, 4)
    wx, wd = win(x), win(dx)
    not_max = wx < wx.max(axis=-1, keepdims=True)
    expect(np.all(wd[not_max] == 0), f"max-pool (type={type}) bottom_diff (eq. 3.9): "
           f"gradient at a position that is not its window's maximum")
    count = (wd != 0).sum(axis=-1)
    tied = int((count > 1).sum())
    expect(tied == 0, f"max-pool (type={type}) bottom_diff (eqs. 3.8-3.9): {tied} window(s) "
           f"with tied maxima (e.g. all 0 after a ReLU) send their gradient to several "
           f"positions; eq. 3.9 sends each window's dL/dY to one position p")
    check(f"max-pool (type={type}) bottom_diff summed per window", wd.sum(axis=-1), dy,
          equation="eq. 3.9")


def test_relu_backward():
    """dL/dX = dL/dY where X > 0, 0 where X < 0; at X == 0 either subgradient is accepted."""
    rng = np.random.default_rng(46)
    x = rng.standard_normal((3, 4, 5))
    x[0, 0, :3] = 0.0
    relu = stu.layer_1.ReLULayer()
    check("ReLU forward output Y = max(X, 0)", relu.forward(x), np.maximum(x, 0), 0)
    dy = rng.standard_normal(x.shape)
    dx = np.asarray(relu.backward(dy.copy()), dtype=np.float64)
    expect_shape("ReLU bottom_diff", dx, x.shape)
    zero = x == 0
    check("ReLU bottom_diff dL/dX (dL/dY where X > 0, 0 where X < 0)",
          np.where(zero, 0, dx), np.where(x > 0, dy, 0), 0)
    expect(np.all((dx[zero] == 0) | (dx[zero] == dy[zero])),
           "ReLU bottom_diff at X == 0: use 0 or dL/dY")


def test_content_loss():
    """Eq. 3.10's value, then eq. 3.11's gradient, for N = 1 and N = 2."""
    rng = np.random.default_rng(47)
    for n in (1, 2):
        x, y = rng.standard_normal((n, 4, 5, 6)), rng.standard_normal((n, 4, 5, 6))
        layer = stu.layer_3.ContentLossLayer()
        check(f"content loss L_content, N = {n}", float(layer.forward(x, y)),
              np.sum((x - y) ** 2) / (2 * x.size), 1e-12, equation="eq. 3.10, 1/(2NCHW)")
        check(f"content loss gradient dL/dX, N = {n}", layer.backward(x, y), (x - y) / x.size,
              equation="eq. 3.11, 1/(NCHW)")


def test_style_loss():
    """Eqs. 3.12-3.13's value, then eq. 3.15's gradient, for N = 1 and N = 2 (the
    normaliser holds N)."""
    rng = np.random.default_rng(48)
    for shape in ((1, 4, 5, 6), (2, 3, 4, 5)):
        x, a = rng.standard_normal(shape), rng.standard_normal(shape)
        n, c, h, w = x.shape
        fx, fa = x.reshape(n, c, -1), a.reshape(n, c, -1)
        g, ga = fx @ fx.transpose(0, 2, 1), fa @ fa.transpose(0, 2, 1)
        layer = stu.layer_3.StyleLossLayer()
        expect_loss = np.sum((g - ga) ** 2) / (4 * n * c ** 2 * h ** 2 * w ** 2)
        check(f"style loss L_style, N = {n}", float(layer.forward(x, a)), expect_loss, 1e-10,
              equation="eqs. 3.12-3.13, 1/(4NC^2H^2W^2)")
        grad = ((g - ga).transpose(0, 2, 1) @ fx).reshape(x.shape) / (n * c ** 2 * h ** 2 *
                                                                      w ** 2)
        check(f"style loss gradient dL/dX, N = {n}", layer.backward(x, a), grad,
              equation="eq. 3.15, 1/(NC^2H^2W^2)")


def test_adam():
    rng = np.random.default_rng(49)
    shape = (1, 3, 4, 5)
    adam = stu.layer_3.AdamOptimizer(0.5, list(shape))
    x = rng.standard_normal(shape)
    m = v = np.zeros(shape)
    expect_x = x.copy()
    for t in range(1, 4):
        g = rng.standard_normal(shape)
        x = adam.update(x, g)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        expect_x = expect_x - 0.5 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        check(f"Adam: the image after step t = {t}", x, expect_x, 1e-9, equation="eq. 3.17")


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
    expect_shape("load_image(path, 32, 48)'s image", image, (1, 3, 32, 48))
    expect(tuple(shape)[:2] == (300, 400), f"load_image's original shape {tuple(shape)}, "
           f"expected (300, 400, 3): save_image resizes back to it")
    rng = np.random.default_rng(50)
    # noise breaks the ties of flat image regions (max-pool is not differentiable at a tie)
    x = np.asarray(image, dtype=np.float64) + rng.standard_normal(np.shape(image))
    feats = vgg.forward(x, ["relu1_1", "relu3_1"])
    expect(set(feats) >= {"relu1_1", "relu3_1"}, f"forward(x, ['relu1_1', 'relu3_1']) "
           f"returned the layers {sorted(feats)}: a dict with (at least) the layers asked for")
    expect_shape("features of relu3_1", feats["relu3_1"], (np.shape(x)[0], 256, 8, 12))
    # the reference: the same weights from the file, the definition of each layer
    weights = file_weights(full_fixture["mat"])
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
    expect_shape("backward(dloss, 'relu3_1'): the image gradient", grad, x.shape)
    check_directional("backward to the image", lambda z: vgg.forward(z, ["relu3_1"])["relu3_1"],
                      grad, x, dloss, directions=2, eps=1e-5, seed=51, threshold=1e-5,
                      reference=reference, forward_threshold=1e-9)
    # save_image resizes back to the picture's shape
    with student_folder(tmp_path / "saved") as saved:     # where the student's code writes
        vgg.save_image(x, shape, str(saved / "out.jpg"))
    from PIL import Image
    with Image.open(nofollow.open(tmp_path, "saved/out.jpg")) as im:
        expect(im.size == (400, 300), f"save_image(image, original_shape, path) wrote a "
               f"{im.size[0]}x{im.size[1]} picture, expected 400x300 (the original shape)")


def test_get_random_img_uses_numpys_global_generator():
    content = np.random.default_rng(51).standard_normal((1, 3, 6, 8)) * 50
    get_random_img = stu.style_transfer.get_random_img
    seed_numpy(1234)        # here and, graded in the sandbox, in the student's process
    a = get_random_img(content, 0.5)
    np.random.seed(1234)
    expect_img = np.random.uniform(-20, 20, content.shape) * 0.5 + content * 0.5
    check("get_random_img(content, 0.5) after np.random.seed(1234)", a, expect_img, 1e-6,
          equation="uniform(-20, 20) noise * ratio + content * (1 - ratio)")


# ------------------------------------------------------------------------ the transfer loop
LOOP_CONTENT = {"relu2_1": 0.4, "relu3_1": 0.6}
LOOP_STYLE = {"relu1_1": 0.5, "relu2_1": 0.3, "relu3_1": 0.2}
LOOP_ALPHA, LOOP_BETA, LOOP_LR, LOOP_STEPS = 2.0, 0.005, 1.0, 3


class RefFeatureNet:
    """The reference feature network (the file's weights, the engine's img2col convolution
    and max-pooling, reference ReLUs) with the student's VGG19 interface: the loop test
    runs the student's loop on it, so the network's own code is not graded twice."""

    def __init__(self, mat, last_layer):
        from labkit.engine.attach import EngineConvolution, EngineMaxPooling
        from labkit.runtime.vgg19_spec import FEATURE_LAYER_NAMES
        weights = file_weights(mat)
        self.names = FEATURE_LAYER_NAMES[:FEATURE_LAYER_NAMES.index(last_layer) + 1]
        self.layers = {}
        for name in self.names:
            if name.startswith("conv"):
                layer = weights.layer(name)
                w = np.transpose(layer.weight, [2, 0, 1, 3]).astype(np.float64)
                self.layers[name] = EngineConvolution(
                    3, w.shape[0], w.shape[3], 1, 1, w, layer.bias.reshape(-1).astype(np.float64),
                    method="img2col", need_param_grad=False)
            elif name.startswith("relu"):
                self.layers[name] = RefReLU()
            else:
                self.layers[name] = EngineMaxPooling(2, 2)

    def forward(self, image, layer_list):
        wanted, out, current = set(layer_list), {}, np.asarray(image, dtype=np.float64)
        last = max(self.names.index(n) for n in wanted)
        for name in self.names[:last + 1]:
            current = self.layers[name].forward(current)
            if name in wanted:
                out[name] = np.array(current)
        return out

    def backward(self, dloss, layer_name=None):
        dlosses = dloss if isinstance(dloss, dict) else {layer_name: dloss}
        current = None
        for name in reversed(self.names[:max(self.names.index(n) for n in dlosses) + 1]):
            if name in dlosses:
                d = np.asarray(dlosses[name], dtype=np.float64)
                current = d if current is None else current + d
            current = self.layers[name].backward(current)
        return np.array(current)


class RefAdam:
    """Adam of eq. 3.17 (the student's AdamOptimizer is graded by test_adam)."""

    def __init__(self, lr, shape):
        self.lr, self.mt, self.vt, self.step = lr, np.zeros(shape), np.zeros(shape), 0

    def update(self, x, grad):
        self.step += 1
        grad = np.asarray(grad, dtype=np.float64)
        self.mt = 0.9 * self.mt + 0.1 * grad
        self.vt = 0.999 * self.vt + 0.001 * grad * grad
        m_hat, v_hat = self.mt / (1 - 0.9 ** self.step), self.vt / (1 - 0.999 ** self.step)
        return np.asarray(x, dtype=np.float64) - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def ref_transfer_loss(net, image, content_targets, style_targets):
    """Eq. 3.16 and its image gradient with the engine's loss layers, in one backward pass."""
    from labkit.engine.losses import ContentLoss, StyleLoss
    feats = net.forward(image, [*LOOP_CONTENT, *LOOP_STYLE])
    total, dlosses, losses = 0.0, {}, {"content": {}, "style": {}}
    for part, weights, scale in (("content", LOOP_CONTENT, LOOP_ALPHA),
                                 ("style", LOOP_STYLE, LOOP_BETA)):
        for name, w in weights.items():
            if part == "content":
                layer, target = ContentLoss(), content_targets[name]
            else:
                layer, target = StyleLoss(), style_targets[name]
            losses[part][name] = layer.forward(feats[name], target)
            total += scale * w * losses[part][name]
            d = scale * w * layer.backward(feats[name], target)
            dlosses[name] = d if name not in dlosses else dlosses[name] + d
    return total, net.backward(dlosses), losses


@pytest.fixture(scope="module")
def loop_case(full_fixture):
    from labkit.runtime.images import load_rgb, preprocess
    net = RefFeatureNet(full_fixture["mat"], "relu3_1")
    mean = np.asarray(file_weights(full_fixture["mat"]).mean_pixel, dtype=np.float64)
    rgb = load_rgb(full_fixture["image"])
    content = preprocess(rgb, mean, 32, 48, np.float64)
    style = preprocess(rgb[::-1, ::-1], mean, 32, 48, np.float64)
    start = content + np.random.default_rng(61).uniform(-20, 20, content.shape)
    content_feats, style_feats = net.forward(content, list(LOOP_CONTENT)), \
        net.forward(style, list(LOOP_STYLE))
    return net, start, {n: content_feats[n] for n in LOOP_CONTENT}, \
        {n: style_feats[n] for n in LOOP_STYLE}


def test_transfer_loop_first_steps_match_the_reference(loop_case):
    """The loop of style_transfer.py (its loss function and its Adam loop: the original's
    loop blanks) with the reference network, loss layers and Adam swapped in:
    the loss and image gradient of eq. 3.16 (two content and three style layers, unequal
    weights), then the first steps of the loop, equal the reference loop's."""
    from labkit.engine.losses import ContentLoss, StyleLoss
    from labkit.runtime.transfer import check_loop_functions
    check_loop_functions()          # the original kit's file keeps its loop in __main__
    net, start, content_targets, style_targets = loop_case
    student_net = to_student(net)

    def student_loss(image):
        return stu.style_transfer.transfer_loss(
            student_net, image, content_targets, style_targets, to_student(ContentLoss()),
            {n: to_student(StyleLoss()) for n in LOOP_STYLE}, LOOP_ALPHA, LOOP_BETA,
            dict(LOOP_CONTENT), dict(LOOP_STYLE))

    total, diff, losses = student_loss(start.copy())
    want_total, want_grad, want_losses = ref_transfer_loss(net, start, content_targets,
                                                           style_targets)
    for part, equation in (("content", "eq. 3.10"), ("style", "eqs. 3.12-3.13")):
        for name, want in want_losses[part].items():
            got = losses[part].get(name)
            expect(got is not None, f"transfer_loss: losses['{part}'] has no entry for {name}")
            expect_close(f"transfer_loss: the {part} loss at {name}", got, want, rtol=1e-9,
                         equation=equation)
    expect_close("transfer_loss: the total loss", total, want_total, rtol=1e-9,
                 equation="eq. 3.16")
    check("transfer_loss image_diff", np.asarray(diff), want_grad, 1e-9,
          equation="eqs. 3.11, 3.15, 3.16")
    # the loop: the student's style_transfer on the student's transfer_loss, reference Adam
    seen = []
    out = stu.style_transfer.style_transfer(
        to_student(lambda image: student_loss(image)[:2], ("__call__",)), start.copy(),
        LOOP_STEPS, LOOP_LR, optimizer=to_student(RefAdam(LOOP_LR, start.shape), ("update",)),
        on_step=to_student(lambda k, image, loss: seen.append((k, np.array(image), loss)),
                           ("__call__",)))
    adam, x = RefAdam(LOOP_LR, start.shape), start
    for k in range(1, LOOP_STEPS + 1):
        loss, grad, _ = ref_transfer_loss(net, x, content_targets, style_targets)
        x = adam.update(x, grad)
        expect(len(seen) >= k and seen[k - 1][0] == k,
               f"style_transfer: on_step saw steps {[s[0] for s in seen]}, expected 1, 2, 3")
        check(f"style_transfer: the image after step {k}", seen[k - 1][1], x, 1e-8,
              equation="one Adam step along loss_fn's image_diff, eq. 3.17")
        expect_close(f"style_transfer: the loss given to on_step at step {k}", seen[k - 1][2],
                     loss, rtol=1e-9, equation="the loss before that step's update")
    check("style_transfer's returned image", np.asarray(out), x, 1e-8,
          equation="the image after the last step")
