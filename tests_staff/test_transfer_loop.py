"""The style-transfer loop is the student's (issue 20 item 1), staff side:

* ``OnePassNet`` / ``PendingGradient`` (labkit/runtime/transfer.py): the student's
  transfer_loss under the objective gives the same loss and gradient in one backward pass
  as run as written, and falls back to as-written when it does more than add and scale;
* the leak probe's loop check (labkit/staff/leaks.py, check 4): a fresh kit passes, and a
  kit whose Objective or run_transfer computes the loss or the Adam steps itself is caught
  (negative controls planted in a copy of the kit).
"""
import os

import numpy as np
import pytest

from labkit.runtime.images import make_demo_image, preprocess
from labkit.runtime.student import stu
from labkit.runtime.transfer import NotLinear, Objective, OnePassNet, PendingGradient

STYLE = {"relu1_1": 1, "relu2_1": 2, "relu3_1": 1}


def objective(tiny_mat, one_pass):
    vgg = stu.style_transfer.VGG19(tiny_mat, dtype=np.float64)
    vgg.build_model(last_layer="relu3_1")
    vgg.init_model()
    vgg.load_model()
    mean = vgg.mean_pixel
    content = preprocess(make_demo_image(24, 32, seed=0), mean, 24, 32, np.float64)
    style = preprocess(make_demo_image(24, 32, seed=7), mean, 24, 32, np.float64)
    return Objective(vgg, content, style, "relu2_1", STYLE, 1.0, 50.0, one_pass=one_pass), \
        content + 5.0


def test_one_pass_equals_the_loss_as_written(tiny_mat):
    fast, image = objective(tiny_mat, True)
    plain, _ = objective(tiny_mat, False)
    total, grad, parts = fast(image)
    assert fast.one_pass, "the reference transfer_loss fell back to one pass per loss layer"
    want_total, want_grad, want_parts = plain(image)
    assert total == pytest.approx(want_total, rel=1e-12) and parts == pytest.approx(want_parts)
    assert np.max(np.abs(grad - want_grad)) <= 1e-12 * np.max(np.abs(want_grad))
    assert np.any(grad != 0)


def test_a_transfer_loss_that_does_more_runs_as_written(tiny_mat, monkeypatch):
    """A transfer_loss that clips its gradient (not linear): the objective falls back to
    running it as written, and the result is what it computes (clipped)."""
    fast, image = objective(tiny_mat, True)
    original = stu.style_transfer.transfer_loss

    def clipped(*args, **kwargs):
        total, diff, losses = original(*args, **kwargs)
        return total, np.clip(diff, -1e-3, 1e-3), losses
    monkeypatch.setattr(stu.style_transfer.module, "transfer_loss", clipped)
    _, grad, _ = fast(image)
    assert not fast.one_pass and np.max(np.abs(grad)) <= 1e-3 and np.any(grad != 0)


def test_pending_gradient_algebra_and_refusals(rng):
    class Net:
        def backward(self, dlosses):
            return sum(d * (i + 1) for i, d in enumerate(dlosses.values()))

    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    net = OnePassNet(Net())
    dense = rng.standard_normal((2, 3))
    g = 0.0
    g += 2.0 * net.backward(a, "x")
    g = dense - g / 4.0 + np.float64(3.0) * net.backward(b, "y")
    assert isinstance(g, PendingGradient)
    np.testing.assert_allclose(g.resolve(), dense - 0.5 * a + 3.0 * 2 * b, rtol=1e-14)
    for bad in (lambda p: p * p, lambda p: p.astype(np.float32), lambda p: np.sqrt(p),
                lambda p: p * np.ones((2, 3))):
        with pytest.raises((NotLinear, TypeError)):
            bad(net.backward(a, "x"))


# ------------------------------------------------------------------- the leak probe's check 4
@pytest.fixture(scope="module")
def quick_kit(tmp_path_factory):
    from labkit.staff.kit import write_kit
    out = str(tmp_path_factory.mktemp("kit") / "kit")
    write_kit(out, check_import=False)
    return out


PLANTED_OBJECTIVE = '''

def _planted_loss(self, image, net=None):          # a working transfer loss, planted
    feats = self.vgg.forward(image, self.layer_list)
    x = feats[self.content_layer]
    content = self.content_loss.forward(x, self.content_target)
    dlosses = {self.content_layer: self.alpha * self.content_loss.backward(x, self.content_target)}
    style = {}
    for name, w in self.style_weights.items():
        style[name] = self.style_loss[name].forward(feats[name])
        d = self.beta * w * self.style_loss[name].backward(feats[name])
        dlosses[name] = dlosses[name] + d if name in dlosses else d
    total = self.alpha * content + self.beta * sum(
        w * style[n] for n, w in self.style_weights.items())
    return total, self.vgg.backward(dlosses), {"content": {self.content_layer: content},
                                              "style": style}


Objective.transfer_loss = _planted_loss
'''

PLANTED_ADAM = '''

def _run_adam(evaluate, record, image, steps, lr, optimizer_state=None):   # planted loop
    adam = AdamOptimizer(lr, image.shape)
    x = image
    for _ in range(steps):
        total, grad, parts = evaluate(x)
        x = adam.update(x, grad)
        record(x, total, parts, 0.0, None)
    return x
'''


@pytest.mark.parametrize("plant,words", [("", []),
                                         (PLANTED_OBJECTIVE, ["Objective"]),
                                         (PLANTED_ADAM, ["run_transfer"])],
                         ids=["kit", "planted-loss", "planted-adam-loop"])
def test_leak_probe_finds_a_working_loop(quick_kit, tmp_path, plant, words):
    import shutil
    from labkit.staff.leaks import probe_loop
    kit = str(tmp_path / "kit")
    shutil.copytree(quick_kit, kit)
    with open(os.path.join(kit, "labkit", "runtime", "transfer.py"), "a") as f:
        f.write(plant)
    found = probe_loop(kit)
    if not words:
        assert found == []
    else:
        assert len(found) == 1 and all(w in found[0] for w in words), found
