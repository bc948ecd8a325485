"""labkit/engine/losses.py: the tuned style-transfer losses compute what the student's
layer_3.py computes (float64, 1e-10), with and without the engine's threads, and their
gradients pass a central-difference check."""
import numpy as np
import pytest

from labkit.engine.losses import ContentLoss, LossLayers, StyleLoss, gram
from labkit.engine.perf import active_pool, engine_threads
from labkit.runtime.gradcheck import assert_close, numeric_gradient
from stu_upload.layer_3 import ContentLossLayer, StyleLossLayer, gram_matrix

# (N, C, H, W): 64 x 80 = 5120 columns is above MIN_SPLIT, so the threads split it
SHAPES = [(1, 5, 64, 80), (2, 3, 7, 9)]


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gram_matches_the_definition(rng, shape, threads):
    x = rng.standard_normal(shape)
    with engine_threads(threads):
        got = gram(x, active_pool())
    want = np.einsum("nchw,ndhw->ncd", x, x)
    assert_close("gram", got, want, 1e-12)
    assert_close("gram vs the student's gram_matrix", got, gram_matrix(x), 1e-12)


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_style_loss_matches_the_students_layer(rng, shape, threads):
    x, y = rng.standard_normal(shape), rng.standard_normal(shape)
    student = StyleLossLayer()
    student.set_target(y)
    scale = 3.7
    ours = LossLayers.style(scale)
    ours.gram_style = student.gram_style
    with engine_threads(threads):
        loss, grad = ours.forward(x), ours.backward(x)
    assert loss == pytest.approx(student.forward(x), rel=1e-12)
    assert_close("scaled style gradient", grad, scale * student.backward(x), 1e-10)
    assert grad.shape == x.shape and grad.dtype == x.dtype


def test_style_loss_gradient_check(rng):
    """float64 central differences of scale * L, a random scale (the upstream gradient of a
    scalar loss), threshold 1e-7; a gradient with the scale forgotten must fail."""
    x = rng.standard_normal((1, 4, 5, 6))
    target = rng.standard_normal((1, 4, 5, 6))
    scale = float(rng.uniform(0.5, 2.0))
    layer = StyleLoss(scale)
    layer.gram_style = gram_matrix(target)
    analytic = layer.backward(x)
    numeric = numeric_gradient(lambda: scale * layer.forward(x), x)
    assert_close("style loss dL/dX", analytic, numeric, 1e-7)
    wrong = StyleLoss(1.0)
    wrong.gram_style = layer.gram_style
    with pytest.raises(AssertionError):
        assert_close("style loss dL/dX, scale forgotten", wrong.backward(x), numeric, 1e-7)


def test_content_loss_matches_the_students_layer(rng):
    x, y = rng.standard_normal((1, 6, 5, 7)), rng.standard_normal((1, 6, 5, 7))
    ours, student = ContentLoss(), ContentLossLayer()
    assert ours.forward(x, y) == pytest.approx(student.forward(x, y), rel=1e-12)
    assert_close("content gradient", ours.backward(x, y), student.backward(x, y), 1e-12)
    # backward without forward first (or after another input) still gives the gradient
    assert_close("content gradient, no forward", ContentLoss().backward(x, y),
                 student.backward(x, y), 1e-12)
    numeric = numeric_gradient(lambda: ours.forward(x, y), x)
    assert_close("content dL/dX", ours.backward(x, y), numeric, 1e-7)


def test_style_loss_refuses_a_missing_or_wrong_target(rng):
    layer = StyleLoss()
    with pytest.raises(RuntimeError, match="gram_style"):
        layer.forward(rng.standard_normal((1, 3, 4, 4)))
    layer.gram_style = np.zeros((1, 2, 2))
    with pytest.raises(ValueError, match="3 channels"):
        layer.forward(rng.standard_normal((1, 3, 4, 4)))
