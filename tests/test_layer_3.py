"""stu_upload/layer_3.py: content/style losses (eqs. 3.10-3.15) and Adam (eq. 3.17)."""
import numpy as np
import pytest

from labkit.runtime.compare import expect_close, expect_shape
from labkit.runtime.gradcheck import GradientCheckError, assert_close, check_vjp
from labkit.runtime.recorded import Recorded
from labkit.runtime.student import lazy, runs_here, stu, to_student

AdamOptimizer, ContentLossLayer, StyleLossLayer, gram_matrix = lazy(
    "layer_3", "AdamOptimizer", "ContentLossLayer", "StyleLossLayer", "gram_matrix")


# expected values recorded from the reference solution (tests/data/layer_3.npz)
REC = Recorded("layer_3")


def feats(rng, shape=(2, 3, 4, 5)):
    return rng.standard_normal(shape)


# ----------------------------------------------------------------------------- content
@pytest.mark.parametrize("case", REC.cases("content/"))
def test_content_loss_matches_formula(case):
    d = REC[case]
    layer = ContentLossLayer()
    expect_close("content loss L_content", layer.forward(d["x"], d["y"]), d["loss"], 1e-12,
                 equation="eq. 3.10")
    assert_close("content loss gradient dL/dX", layer.backward(d["x"], d["y"]), d["grad"],
                 1e-12, equation="eq. 3.11")


def test_content_gradient_numeric(rng):
    """The value first (a wrong loss is not a wrong gradient), then eq. 3.11 against central
    differences of your own forward."""
    d = REC["content/0"]
    x, y = d["x"].copy(), d["y"]
    layer = ContentLossLayer()
    expect_close("content loss L_content", layer.forward(x, y), d["loss"], 1e-12,
                 equation="eq. 3.10")
    w = float(rng.standard_normal())     # random upstream scalar
    check_vjp("content loss gradient dL/dX", lambda v: np.array(layer.forward(v, y)),
              lambda dy: layer.backward(x, y) * dy, x, dy=np.array(w), equation="eq. 3.11")


def test_content_keeps_dtype_and_checks_shapes(rng):
    x = feats(rng).astype(np.float32)
    layer = ContentLossLayer()
    assert layer.backward(x, x * 0).dtype == np.float32
    with pytest.raises(ValueError, match="same size"):
        layer.forward(x, x[:, :2])


# ----------------------------------------------------------------------------- style
def test_gram_matrix_shape_and_values():
    d = REC["style/0"]
    g = gram_matrix(d["x"])
    expect_shape("gram matrix G", g, (2, 3, 3), equation="eq. 3.12, [N, C, C]")
    assert_close("gram matrix G", g, d["gram"], 1e-12, equation="eq. 3.12")


@pytest.mark.parametrize("case", REC.cases("style/"))
def test_style_loss_and_gradient_match_formulas(case):
    d = REC[case]
    layer = StyleLossLayer()
    expect_close("style loss L_style", layer.forward(d["x"], d["y"]), d["loss"], 1e-12,
                 equation="eqs. 3.12-3.13")
    assert_close("style loss gradient dL/dX", layer.backward(d["x"], d["y"]), d["grad"],
                 1e-10, equation="eq. 3.15")


def test_style_gradient_numeric(rng):
    """The value first (a wrong loss is not a wrong gradient), then eq. 3.15 against central
    differences of your own forward."""
    d = REC["style/0"]
    x, y = d["x"].copy(), d["y"]
    layer = StyleLossLayer()
    layer.set_target(y)
    expect_close("style loss L_style", layer.forward(x), d["loss"], 1e-12,
                 equation="eqs. 3.12-3.13")
    w = float(rng.standard_normal())
    check_vjp("style loss gradient dL/dX", lambda v: np.array(layer.forward(v)),
              lambda dy: layer.backward(x.copy()) * dy, x, dy=np.array(w), equation="eq. 3.15")


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
                  lambda dy: 2 * content.backward(x, y) * dy, x, dy=np.array(1.0))


def test_style_target_is_cached(monkeypatch):
    d = REC["style/0"]
    x, y = d["x"], d["y"]
    layer = StyleLossLayer()
    calls = []
    original = layer.set_target
    monkeypatch.setattr(layer, "set_target", to_student(
        lambda s: calls.append(1) or original(s), ("__call__",)))
    if runs_here():
        for _ in range(3):
            layer.forward(x + 0.0, y)
            layer.backward(x, y)
        assert len(calls) == 1                  # same object: Gram computed once
    else:       # graded in the sandbox every array arrives as a new object: a set target
        layer.set_target(y)
        for _ in range(3):
            layer.forward(x + 0.0)
            layer.backward(x)
        assert len(calls) == 1                  # kept: Gram computed once
    layer.forward(x, y.copy())                  # a new object: recomputed
    assert len(calls) == 2
    assert layer.forward(x) == pytest.approx(float(d["loss"]))   # target kept


def test_style_errors_teach(rng):
    layer = StyleLossLayer()
    with pytest.raises(RuntimeError, match="set_target"):
        layer.forward(feats(rng))
    layer.set_target(feats(rng, (1, 4, 3, 3)))
    with pytest.raises(ValueError, match="channels"):
        layer.forward(feats(rng, (1, 3, 3, 3)))


def test_style_float32():
    d = REC["style/0"]
    x, y = d["x"].astype(np.float32), d["y"].astype(np.float32)
    layer = StyleLossLayer()
    assert layer.backward(x, y).dtype == np.float32, "style gradient: float32 in, float32 out"
    expect_close("style loss L_style in float32", layer.forward(x, y), d["loss"], 1e-5,
                 equation="eqs. 3.12-3.13")


# ----------------------------------------------------------------------------- adam
def test_adam_first_steps():
    """Eq. 3.17 over four steps (bias-corrected moments), against recorded values."""
    d = REC["adam/0"]
    adam = AdamOptimizer(float(d["lr"]), d["x"].shape)
    x = d["x"]
    for t, (g, want) in enumerate(zip(d["grads"], d["steps"]), 1):
        x = adam.update(x, g)
        assert_close(f"Adam: the image after step t = {t}", x, want, 1e-12, equation="eq. 3.17")
    assert adam.step == 4


def test_adam_keeps_dtype_and_checks_shape():
    adam = AdamOptimizer(1.0, (1, 3, 2, 2))
    x = np.zeros((1, 3, 2, 2), np.float32)
    assert adam.update(x, np.ones_like(x)).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        adam.update(np.zeros((1, 3, 2, 3)), np.zeros((1, 3, 2, 3)))


def test_assert_close_is_strict_enough():
    with pytest.raises(GradientCheckError):
        assert_close("x", np.ones(3), np.ones(3) * 1.001)
