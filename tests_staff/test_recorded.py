"""tests/data/*.npz (labkit/staff/record.py): current, and right by independent definitions.

The public tests compare student code with these recorded values, so the answer key itself
is checked here against definitions written out with explicit sums (staff-only: these are
working answers and never ship).
"""
import subprocess
import sys

import numpy as np
import pytest

from labkit.runtime.gradcheck import assert_close
from labkit.runtime.recorded import Recorded
from labkit.staff.record import ROOT


def naive_conv(x, w, b, pad, stride):
    """Eq. 3.3 written with explicit sums."""
    n, cin, h, wd = x.shape
    k, cout = w.shape[1], w.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    y = np.zeros((n, cout, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            y[:, :, i, j] = np.einsum("ncpq,cpqo->no", patch, w) + b
    return y


def loop_style(x, y):
    """Eqs. 3.12-3.15 with explicit sums: (loss, gradient)."""
    n, c, h, w = x.shape
    loss, grad = 0.0, np.zeros_like(x)
    for b in range(n):
        for i in range(c):
            for j in range(c):
                g, a = np.sum(x[b, i] * x[b, j]), np.sum(y[b, i] * y[b, j])
                loss += (g - a) ** 2
                grad[b, i] += x[b, j] * (g - a)
    scale = n * c ** 2 * h ** 2 * w ** 2
    return loss / (4 * scale), grad / scale


def test_recorded_data_is_current():
    r = subprocess.run([sys.executable, "-m", "labkit.staff.record", "--check"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, ("tests/data is out of date; rebuild it with 'python -m "
                               "labkit.staff.record':\n" + r.stderr[-2000:])


@pytest.mark.parametrize("case", Recorded("layer_2").cases("conv/"))
def test_recorded_conv_matches_definition(case):
    d = Recorded("layer_2")[case]
    x, w, b, pad, stride = d["x"], d["w"], d["b"], int(d["pad"]), int(d["stride"])
    assert_close("recorded conv output", d["y"], naive_conv(x, w, b, pad, stride), 1e-12)
    # gradients of L = sum(y * dy) by linearity: L is linear in x and in w
    eps = 1e-6
    for name, arr in (("dx", x), ("dw", w)):
        probe = np.random.default_rng(0).standard_normal(arr.shape)
        plus = naive_conv(*(((x + eps * probe, w) if name == "dx" else (x, w + eps * probe))),
                          b, pad, stride)
        directional = float(np.sum((plus - d["y"]) * d["dy"])) / eps
        assert directional == pytest.approx(float(np.sum(d[name] * probe)), rel=1e-6)
    assert_close("recorded conv d_bias", d["db"], d["dy"].sum(axis=(0, 2, 3)), 1e-12)


@pytest.mark.parametrize("case", Recorded("layer_3").cases("style/"))
def test_recorded_style_matches_definition(case):
    d = Recorded("layer_3")[case]
    loss, grad = loop_style(d["x"], d["y"])
    assert float(d["loss"]) == pytest.approx(loss, rel=1e-12)
    assert_close("recorded style gradient", d["grad"], grad, 1e-10)


@pytest.mark.parametrize("case", Recorded("layer_2").cases("pool/"))
def test_recorded_pool_matches_definition(case):
    d = Recorded("layer_2")[case]
    x, k, s = d["x"], int(d["k"]), int(d["s"])
    ho, wo = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    want = np.zeros((x.shape[0], x.shape[1], ho, wo))
    dx = np.zeros(x.shape)
    for idx in np.ndindex(*want.shape):
        win = x[idx[0], idx[1], idx[2] * s:idx[2] * s + k, idx[3] * s:idx[3] * s + k]
        want[idx] = win.max()
        kh, kw = divmod(int(np.argmax(win)), k)
        dx[idx[0], idx[1], idx[2] * s + kh, idx[3] * s + kw] += d["dy"][idx]
    assert np.array_equal(d["y"], want)
    assert_close("recorded pool gradient", d["dx"], dx, 1e-12)


def test_recorded_softmax_matches_definition():
    d = Recorded("layer_1")["softmax/0"]
    z = d["x"] - d["x"].max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    onehot = np.eye(p.shape[1])[d["label"]]
    assert_close("recorded probabilities", d["prob"], p, 1e-12)
    assert_close("recorded softmax gradient", d["dx"], (p - onehot) / p.shape[0], 1e-12)


def _tiny_features(tiny_mat, x, last):
    """The tiny VGG19's features by definition (the engine's reference convolution)."""
    from labkit.engine.conv_algos import conv2d_reference
    from labkit.runtime.matfile import load_vgg19_mat
    weights, feats = load_vgg19_mat(tiny_mat), {}
    for layer in weights.layers[:weights.layers.index(weights.layer(last)) + 1]:
        if layer.type == "conv":
            x = conv2d_reference(x, np.transpose(layer.weight, [2, 0, 1, 3]).astype(np.float64),
                                 layer.bias.reshape(-1).astype(np.float64), 1, 1)
        elif layer.type == "relu":
            x = np.maximum(x, 0)
        else:
            n, c, h, w = x.shape
            x = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        feats[layer.name] = x
    return feats


def test_recorded_network_features_match_definition(tiny_mat):
    """tests/data/style_transfer.npz (the network tests check forward values with it) was
    recorded with the same tiny VGG19 file the public tests build (TINY_MAT)."""
    from labkit.staff.record import FEATURES
    rec = Recorded("style_transfer")
    d = rec["network/8x8"]
    assert_close("recorded relu2_1", d["relu2_1"],
                 _tiny_features(tiny_mat, d["x"], "relu2_1")["relu2_1"], 1e-10)
    d = rec["network/32x48"]
    feats = _tiny_features(tiny_mat, d["x"], "relu5_1")
    for name in FEATURES:
        assert np.any(d[name] > 0), f"{name}: all zero (a check that cannot fail)"
        assert_close(f"recorded {name}", d[name], feats[name], 1e-10)
