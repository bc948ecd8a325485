"""stu_upload/layer_3.py: content/style losses (eqs. 3.10-3.15) and Adam (eq. 3.17)."""
import numpy as np
import pytest

from labkit.runtime.gradcheck import GradientCheckError, assert_close, check_vjp
from stu_upload.layer_3 import AdamOptimizer, ContentLossLayer, StyleLossLayer, gram_matrix


def feats(rng, shape=(2, 3, 4, 5)):
    return rng.standard_normal(shape)


# ----------------------------------------------------------------------------- content
def test_content_loss_matches_formula(rng):
    x, y = feats(rng), feats(rng)
    layer = ContentLossLayer()
    expected = sum((x.ravel()[i] - y.ravel()[i]) ** 2 for i in range(x.size)) / (2 * x.size)
    assert layer.forward(x, y) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(layer.backward(x, y), (x - y) / x.size, rtol=1e-12)


def test_content_gradient_numeric(rng):
    x, y = feats(rng), feats(rng)
    layer = ContentLossLayer()
    w = float(rng.standard_normal())     # random upstream scalar
    check_vjp("content dX", lambda v: np.array(layer.forward(v, y)),
              lambda dy: layer.backward(x, y) * dy, x, dy=np.array(w))


def test_content_keeps_dtype_and_checks_shapes(rng):
    x = feats(rng).astype(np.float32)
    layer = ContentLossLayer()
    assert layer.backward(x, x * 0).dtype == np.float32
    with pytest.raises(ValueError, match="same size"):
        layer.forward(x, x[:, :2])


# ----------------------------------------------------------------------------- style
def loop_style_loss(x, y):
    """Eqs. 3.12-3.13 written with explicit sums."""
    n, c, h, w = x.shape
    total = 0.0
    for b in range(n):
        for i in range(c):
            for j in range(c):
                g = np.sum(x[b, i] * x[b, j])
                a = np.sum(y[b, i] * y[b, j])
                total += (g - a) ** 2
    return total / (4 * n * c ** 2 * h ** 2 * w ** 2)


def loop_style_grad(x, y):
    """Eq. 3.15 with explicit sums."""
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    for b in range(n):
        for i in range(c):
            for j in range(c):
                g = np.sum(x[b, j] * x[b, i])
                a = np.sum(y[b, j] * y[b, i])
                out[b, i] += x[b, j] * (g - a)
    return out / (n * c ** 2 * h ** 2 * w ** 2)


def test_gram_matrix_shape_and_values(rng):
    x = feats(rng)
    g = gram_matrix(x)
    assert g.shape == (2, 3, 3)
    assert g[1, 0, 2] == pytest.approx(np.sum(x[1, 0] * x[1, 2]))


def test_style_loss_and_gradient_match_formulas(rng):
    x, y = feats(rng), feats(rng)
    layer = StyleLossLayer()
    assert layer.forward(x, y) == pytest.approx(loop_style_loss(x, y), rel=1e-12)
    np.testing.assert_allclose(layer.backward(x, y), loop_style_grad(x, y), rtol=1e-10)


def test_style_gradient_numeric(rng):
    x, y = feats(rng), feats(rng)
    layer = StyleLossLayer()
    layer.set_target(y)
    w = float(rng.standard_normal())
    check_vjp("style dX", lambda v: np.array(layer.forward(v)),
              lambda dy: layer.backward(x.copy()) * dy, x, dy=np.array(w))


def test_wrong_gradient_fails_the_check(rng):
    """Negative control: the gradient without the factor 4 of eq. 3.15 must be caught."""
    x, y = feats(rng), feats(rng)
    layer = StyleLossLayer()
    layer.set_target(y)
    with pytest.raises(GradientCheckError):
        check_vjp("style dX (wrong)", lambda v: np.array(layer.forward(v)),
                  lambda dy: layer.backward(x.copy()) * dy / 4, x, dy=np.array(1.0))
    content = ContentLossLayer()
    with pytest.raises(GradientCheckError):
        check_vjp("content dX (wrong)", lambda v: np.array(content.forward(v, y)),
                  lambda dy: (x - y) * dy, x, dy=np.array(1.0))


def test_style_target_is_cached(rng, monkeypatch):
    x, y = feats(rng), feats(rng)
    layer = StyleLossLayer()
    calls = []
    original = layer.set_target
    monkeypatch.setattr(layer, "set_target", lambda s: calls.append(1) or original(s))
    for _ in range(3):
        layer.forward(x + 0.0, y)
        layer.backward(x, y)
    assert len(calls) == 1                      # same object: Gram computed once
    layer.forward(x, y.copy())                  # a new object: recomputed
    assert len(calls) == 2
    assert layer.forward(x) == pytest.approx(loop_style_loss(x, y))   # target kept


def test_style_errors_teach(rng):
    layer = StyleLossLayer()
    with pytest.raises(RuntimeError, match="set_target"):
        layer.forward(feats(rng))
    layer.set_target(feats(rng, (1, 4, 3, 3)))
    with pytest.raises(ValueError, match="channels"):
        layer.forward(feats(rng, (1, 3, 3, 3)))


def test_style_float32(rng):
    x, y = feats(rng).astype(np.float32), feats(rng).astype(np.float32)
    layer = StyleLossLayer()
    assert layer.backward(x, y).dtype == np.float32
    assert layer.forward(x, y) == pytest.approx(loop_style_loss(x.astype(float),
                                                                y.astype(float)), rel=1e-5)


# ----------------------------------------------------------------------------- adam
def test_adam_first_steps_by_hand():
    x = np.array([1.0, -2.0, 0.5])
    grads = [np.array([0.1, -0.2, 0.0]), np.array([0.3, 0.1, -0.5]),
             np.array([-0.2, 0.4, 0.1])]
    adam = AdamOptimizer(0.01, x.shape)
    # step 1: m = 0.1 g, v = 0.001 g^2 -> m_hat = g, v_hat = g^2 -> step = lr * sign(g)
    g1 = grads[0]
    x1 = adam.update(x, g1)
    np.testing.assert_allclose(x1, x - 0.01 * g1 / (np.abs(g1) + 1e-8), rtol=1e-12)
    # steps 2 and 3 by hand
    m, v, xe = 0.1 * g1, 0.001 * g1 ** 2, x1
    for t, g in ((2, grads[1]), (3, grads[2])):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g ** 2
        xe = xe - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        x1 = adam.update(x1, g)
        np.testing.assert_allclose(x1, xe, rtol=1e-12)
    assert adam.step == 3


def test_adam_keeps_dtype_and_checks_shape():
    adam = AdamOptimizer(1.0, (1, 3, 2, 2))
    x = np.zeros((1, 3, 2, 2), np.float32)
    assert adam.update(x, np.ones_like(x)).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        adam.update(np.zeros((1, 3, 2, 3)), np.zeros((1, 3, 2, 3)))


def test_assert_close_is_strict_enough():
    with pytest.raises(GradientCheckError):
        assert_close("x", np.ones(3), np.ones(3) * 1.001)
