"""Tests for labkit.runtime.pycnml_sim: quantisation arithmetic, layer maths, file format, misuse."""
import os

import numpy as np
import pytest

from labkit.engine.attach import pool_max as ref_pool     # checked against a loop definition
from labkit.runtime import pycnml_sim as pycnml
from labkit.runtime.pycnml_sim import CnmlError, QuantParam


# ------------------------------------------------------------------------ references
def ref_conv(x, w, b, stride=1, dilation=1, pad=0):
    """Direct float64 convolution, NCHW input, [Cout, Cin, k, k] weight."""
    n, c, h, wd = x.shape
    cout, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ek = dilation * (k - 1) + 1
    ho, wo = (h + 2 * pad - ek) // stride + 1, (wd + 2 * pad - ek) // stride + 1
    y = np.zeros((n, cout, ho, wo)) + b[None, :, None, None]
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i * dilation:i * dilation + stride * (ho - 1) + 1:stride,
                       j * dilation:j * dilation + stride * (wo - 1) + 1:stride]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return y


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def qp_of(a):
    return pycnml.QuantTool.get_quant_param(a)


def conv_net(x, w, b, wq, iq, stride=1, dilation=1, pad=0):
    net = pycnml.CnmlNet(1, pycnml.MLU270)
    net.setInputShape(*x.shape)
    net.createConvLayer("conv", w.shape[0], w.shape[2], stride, dilation, pad, iq)
    net.loadParams(0, w.ravel(), b, wq)
    net.setInputData(x.ravel())
    assert net.forward() is None
    out = net.getOutputData()
    assert isinstance(out, list) and isinstance(out[0], float)
    return np.array(out).reshape(net._layers[0].out_shape)


# ------------------------------------------------------------------- pure functions
def test_backend_identification():
    assert pycnml.SIMULATOR is True
    assert pycnml.backend_name() == "pycnml simulator (NumPy)"


def test_quantize_round_trip_within_half_step():
    rng = np.random.default_rng(0)
    for mag in (1e-3, 0.7, 5.0, 300.0):
        x = rng.uniform(-mag, mag, 5000)
        pos, sc = pycnml.calibrate(x)
        q = pycnml.quantize(x, pos, sc)
        assert q.dtype == np.int8
        step = 2.0 ** pos / sc
        err = np.abs(pycnml.dequantize(q, pos, sc) - x)
        assert err.max() <= 0.5 * step * (1 + 1e-12)
        assert err.max() > 0.1 * step  # really quantised, not a float pass-through


def test_quantize_saturates_and_rounds_half_to_even():
    pos, sc = -2, 1.0  # step 0.25
    q = pycnml.quantize([40.0, 31.75, 31.9, -32.0, -32.3, -1e9, 1e9], pos, sc)
    assert q.tolist() == [127, 127, 127, -128, -128, -128, 127]
    # ties go to even (numpy.rint): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0
    q = pycnml.quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5]) * 0.25, pos, sc)
    assert q.tolist() == [0, 2, 2, 0, -2]


@pytest.mark.parametrize("m", [1e-6, 0.01, 1.0, 127.0, 128.0, 254.0, 1000.0, 3.3e4])
def test_calibrate_maps_max_to_127(m):
    x = np.array([0.1 * m, -m, 0.5 * m])
    pos, sc = pycnml.calibrate(x)
    assert isinstance(pos, int) and 1.0 <= sc < 2.0
    assert pos == int(np.ceil(np.log2(m / 127)))
    assert pycnml.quantize(x, pos, sc)[1] == -127
    assert pycnml.quantize(-x, pos, sc)[1] == 127
    assert np.isclose(pycnml.dequantize(127, pos, sc), m, rtol=1e-12)


def test_calibrate_zero_and_nonfinite():
    assert pycnml.calibrate(np.zeros(5)) == (0, 1.0)
    assert pycnml.quantize(np.zeros(3), *pycnml.calibrate(np.zeros(3))).tolist() == [0, 0, 0]
    with pytest.raises(CnmlError, match="inf or nan"):
        pycnml.calibrate([1.0, np.inf])


def test_quant_tool_observe_running_max():
    qt = pycnml.QuantTool()
    qt.observe("conv1_1", [1.0, -3.0])
    qt.observe("conv1_1", [2.0])
    assert qt.quant_param("conv1_1") == QuantParam(*pycnml.calibrate([3.0]))
    assert pycnml.QuantTool.getQuantParam([3.0]) == qt.quant_param("conv1_1")
    with pytest.raises(CnmlError, match="nothing observed for 'fc6'"):
        qt.quant_param("fc6")


def test_bad_quant_param_values():
    with pytest.raises(CnmlError, match="scale must be a finite positive"):
        pycnml.quantize([1.0], 0, 0.0)
    with pytest.raises(CnmlError, match="position must be an integer"):
        pycnml.quantize([1.0], 0.5, 1.0)


# ------------------------------------------------------------------------ conv maths
@pytest.mark.parametrize("stride,dilation,pad", [(1, 1, 1), (2, 1, 0), (1, 2, 2), (3, 1, 2)])
def test_conv_exact_on_representable_values(stride, dilation, pad):
    rng = np.random.default_rng(1)
    x = rng.integers(-4, 5, (2, 2, 9, 8)).astype(np.float64)  # q = x with QuantParam(0, 1)
    w = rng.integers(-4, 5, (3, 2, 3, 3)) * 0.5  # q = 2w with QuantParam(-1, 1)
    b = rng.integers(-6, 7, 3) * 0.5
    y = conv_net(x, w, b, QuantParam(-1, 1.0), QuantParam(0, 1.0), stride, dilation, pad)
    ref = ref_conv(x, w, b, stride, dilation, pad)
    assert y.shape == ref.shape
    np.testing.assert_array_equal(y, ref)


def test_conv_bit_matches_documented_int8_arithmetic():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 7, 7)) * 2
    w = rng.standard_normal((4, 3, 3, 3)) * 0.1
    b = rng.standard_normal(4)
    iq, wq = qp_of(x.astype(np.float32).astype(np.float16)), qp_of(w)
    y = conv_net(x, w, b, wq, iq, 1, 1, 1)
    # by hand: fp16 input, int8 codes, exact integer conv, rescale, + fp16 bias, round to fp16
    xq = pycnml.quantize(x.astype(np.float32).astype(np.float16), iq.position, iq.scale)
    wqi = pycnml.quantize(w.astype(np.float32), wq.position, wq.scale)
    acc = ref_conv(xq.astype(np.float64), wqi.astype(np.float64), np.zeros(4), 1, 1, 1)
    assert np.all(acc == np.round(acc))
    step = 2.0 ** (iq.position + wq.position) / (iq.scale * wq.scale)
    b16 = b.astype(np.float32).astype(np.float16).astype(np.float64)
    expect = (acc * step + b16[None, :, None, None]).astype(np.float16)
    np.testing.assert_array_equal(y, expect.astype(np.float64))
    # and it is close to, but not equal to, the float result
    ref = ref_conv(x, w, b, 1, 1, 1)
    assert not np.array_equal(y, ref)
    assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()


def test_large_accumulation_is_exact():
    # all codes -128: |sum| = 128*128*K must survive float64 GEMM exactly
    x = np.full((1, 64, 3, 3), -8.0)  # QuantParam(-4, 1): q = -128
    w = np.full((2, 64, 3, 3), -1.0)  # QuantParam(-7, 1): q = -128
    y = conv_net(x, w, np.zeros(2), QuantParam(-7, 1.0), QuantParam(-4, 1.0), 1, 1, 0)
    assert y.ravel().tolist() == [8.0 * 64 * 9] * 2


def test_int8_products_are_exact_in_float32_slices():
    """The simulator's GEMMs run in float32 (twice float64's speed) over 1024-long slices:
    exact for any int8 values and any inner size (fc6: 25,088), equal to int64 arithmetic.
    (Why slices: float32 holds every integer only up to 2**24, the sum of 1,024 products;
    how far past it one whole GEMM stays right depends on how the BLAS splits its sums.)"""
    from labkit.runtime.pycnml_sim import _int_matmul
    rng = np.random.default_rng(7)
    for k in (9, 1024, 4608, 25088):
        a = rng.integers(-128, 128, (3, k), dtype=np.int8)
        b = rng.integers(-128, 128, (k, 40), dtype=np.int8)
        a[0], b[:, 0] = -128, -128              # the largest products, all of one sign
        a[1], b[:, 1] = 127, 127                # odd ones: their sum needs every bit
        exact = a.astype(np.int64) @ b.astype(np.int64)
        got = _int_matmul(a.astype(np.float32), b.astype(np.float32))
        assert got.dtype == np.float64 and np.array_equal(got, exact.astype(np.float64)), k
    assert np.float32(2 ** 24 + 1) == 2 ** 24       # the bound the slices keep under


def test_wide_conv_and_mlp_accumulate_exactly():
    """A conv with 512 input channels (K = 4608, VGG's conv5) and an MLP with K = 25,088
    (fc6), on random INT8 codes: the simulator's integer sums equal int64 arithmetic."""
    rng = np.random.default_rng(8)
    x = rng.uniform(-8, 8, (1, 512, 4, 4))            # QuantParam(-4, 1): codes -128..127
    w = rng.uniform(-1, 1, (3, 512, 3, 3))            # QuantParam(-7, 1)
    y = conv_net(x, w, np.zeros(3), QuantParam(-7, 1.0), QuantParam(-4, 1.0), 1, 1, 1)
    xq = pycnml.quantize(x.astype(np.float32).astype(np.float16), -4, 1.0).astype(np.int64)
    wq = pycnml.quantize(w.astype(np.float32), -7, 1.0).astype(np.int64)
    acc = ref_conv(xq.astype(np.float64), wq.astype(np.float64), np.zeros(3), 1, 1, 1)
    expect = (acc * 2.0 ** -11).astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(y, expect)
    from labkit.runtime.pycnml_sim import _Mlp
    layer = _Mlp("fc6", (1, 25088, 1, 1), 5, QuantParam(-4, 1.0))
    wm = rng.uniform(-1, 1, (5, 25088))
    layer.load(wm.ravel(), np.zeros(5), QuantParam(-7, 1.0), "test")
    xm = rng.uniform(-8, 8, (1, 25088, 1, 1)).astype(np.float16)
    got = layer.run(xm)
    codes = pycnml.quantize(xm, -4, 1.0).reshape(1, -1).astype(np.int64)
    exact = codes @ layer.w.astype(np.int64).T
    np.testing.assert_array_equal(got.reshape(1, -1), (exact * 2.0 ** -11).astype(np.float16))


# ------------------------------------------------------------------------- small net
def build_small_net(x, w1, b1, w2, b2, iq1, iq2, with_softmax=True):
    net = pycnml.CnmlNet(16, pycnml.MLU270)
    net.setInputShape(*x.shape)
    net.createConvLayer("conv1", 8, 3, 1, 1, 1, iq1)
    net.createReLuLayer("relu1")
    net.createPoolingLayer("pool1", 2, 2)
    net.createFlattenLayer("flatten", [1, 8 * 5 * 5, 1, 1])
    net.createMlpLayer("fc", 10, iq2)
    if with_softmax:
        net.createSoftmaxLayer("prob", 1)
    for i in range(net.size()):
        if net.needToBeQuantized(i):
            w, b = (w1, b1) if i == 0 else (w2, b2)
            net.loadParams(i, list(w.ravel()), b, qp_of(w))
    net.setInputData(x.ravel())
    net.forward()
    return net


def test_small_net_matches_float_reference_within_int8_error():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 11, 11))
    w1, b1 = rng.standard_normal((8, 3, 3, 3)) * 0.3, rng.standard_normal(8) * 0.1
    w2, b2 = rng.standard_normal((10, 200)) * 0.1, rng.standard_normal(10) * 0.1
    h = ref_pool(np.maximum(ref_conv(x, w1, b1, 1, 1, 1), 0), 2, 2)  # (1, 8, 5, 5)
    logits = h.transpose(0, 2, 3, 1).reshape(1, -1) @ w2.T + b2  # CnmlFlattenLayer: H, W, C
    iq1, iq2 = qp_of(x), qp_of(h)

    net = build_small_net(x, w1, b1, w2, b2, iq1, iq2, with_softmax=False)
    y = np.array(net.getOutputData()).reshape(1, 10)
    rel = np.linalg.norm(y - logits) / np.linalg.norm(logits)
    assert 1e-4 < rel < 0.03  # quantisation visible but small
    assert not np.array_equal(y, logits.astype(np.float32))
    np.testing.assert_array_equal(y, y.astype(np.float16))  # fp16 activations

    net = build_small_net(x, w1, b1, w2, b2, iq1, iq2)
    assert net.size() == 6
    assert [net.getLayerName(i) for i in range(6)] == [
        "conv1", "relu1", "pool1", "flatten", "fc", "prob"]
    assert [net.needToBeQuantized(i) for i in range(6)] == [True, False, False, False, True, False]
    p = np.array(net.getOutputData()).reshape(1, 10)
    assert abs(p.sum() - 1) < 1e-5
    np.testing.assert_allclose(p, softmax(logits), atol=0.01)
    assert p.argmax() == logits.argmax()
    np.testing.assert_allclose(p, softmax(y.astype(np.float32)), rtol=1e-5)  # softmax in fp32


def test_input_cast_relu_pool_flatten_in_fp16():
    x = np.array([1 + 2.0 ** -12, -3.0, 70000.0, 2.0 ** -30, 0.1, 5.0, -1.0, 7.0, 2.0])
    net = pycnml.CnmlNet()
    net.setInputShape(1, 1, 3, 3)
    net.createFlattenLayer("flat", [1, 9, 1, 1])
    net.setInputData(x)
    net.forward()
    out = net.getOutputData()  # hidden fp32 -> fp16 input cast, visible
    assert out[:4] == [1.0, -3.0, np.inf, 0.0]
    assert out[4] == float(np.float16(0.1)) != float(np.float32(0.1))

    net = pycnml.CnmlNet()
    net.setInputShape(1, 1, 3, 3)
    net.createReLuLayer("relu")
    net.createPoolingLayer("pool", 2, 1)
    net.createFlattenLayer("flat", [1, 4, 1, 1])
    net.setInputData(x)
    net.forward()
    with np.errstate(over="ignore"):
        x16 = np.maximum(x.astype(np.float32).astype(np.float16), 0).astype(np.float64)
    expect = ref_pool(x16.reshape(1, 1, 3, 3), 2, 1).ravel()
    assert np.isinf(expect[1])  # 70000 overflows fp16
    np.testing.assert_array_equal(np.array(net.getOutputData()), expect)


def test_flatten_order_is_h_w_c_like_cnml_flatten_layer():
    """CnmlFlattenLayer transposes NCHW -> NHWC, reshapes, transposes back: the flat
    vector runs over (h, w, c), channel fastest (MatConvNet's fc6 order), not (c, h, w)."""
    x = np.arange(2 * 2 * 3, dtype=np.float64).reshape(1, 2, 2, 3)     # N, C=2, H=2, W=3
    net = pycnml.CnmlNet()
    net.setInputShape(1, 2, 2, 3)
    net.createFlattenLayer("flat", [1, 12, 1, 1])
    net.setInputData(x.ravel())
    net.forward()
    out = net.getOutputData()
    assert out == x.transpose(0, 2, 3, 1).ravel().tolist()
    assert out[:4] == [0.0, 6.0, 1.0, 7.0]          # (h0 w0 c0), (h0 w0 c1), (h0 w1 c0), ...
    assert out != x.ravel().tolist()                # negative control: NCHW order differs


@pytest.mark.parametrize("k,s,hw", [(2, 2, (5, 7)), (3, 2, (7, 6)), (2, 1, (4, 4))])
def test_max_pool_floor_size(k, s, hw):
    rng = np.random.default_rng(4)
    x = rng.integers(-100, 100, (2, 3) + hw).astype(np.float64)
    net = pycnml.CnmlNet()
    net.setInputShape(*x.shape)
    net.createPoolingLayer("pool", k, s)
    net.setInputData(x.ravel())
    net.forward()
    ref = ref_pool(x, k, s)
    assert net._layers[0].out_shape == ref.shape
    np.testing.assert_array_equal(np.array(net.getOutputData()), ref.ravel())


# ------------------------------------------------------------------------- npz file
def test_quant_npz_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    inp = [QuantParam(int(p), float(s)) for p, s in
           zip(rng.integers(-10, 5, 19), rng.uniform(1, 2, 19))]
    fil = [(int(p), float(s)) for p, s in zip(rng.integers(-12, 0, 19), rng.uniform(1, 2, 19))]
    path = tmp_path / "vgg19_quant_param_new.npz"
    pycnml.save_quant_npz(str(path), inp, fil)
    with np.load(path) as d:
        assert sorted(d.files) == ["filter", "input"] and d["input"].shape == (38,)
        assert d["filter"][0] == fil[0][0] and d["filter"][1] == fil[0][1]
    li, lf = pycnml.load_quant_npz(str(path))
    assert li == inp and lf == [QuantParam(*f) for f in fil]
    assert pycnml.QuantTool.load_quant_npz(str(path))[0] == inp


def test_quant_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="quantisation parameter file not found"):
        pycnml.load_quant_npz(str(tmp_path / "nope.npz"))
    bad = tmp_path / "nokey.npz"
    np.savez(bad, input=np.ones(38))
    with pytest.raises(CnmlError, match="missing key 'filter'"):
        pycnml.load_quant_npz(str(bad))
    short = tmp_path / "short.npz"
    np.savez(short, input=np.ones(36), filter=np.ones(36))
    with pytest.raises(CnmlError, match="'input' holds 36 numbers, expected 38"):
        pycnml.load_quant_npz(str(short))
    assert len(pycnml.load_quant_npz(str(short), expected_pairs=18)[0]) == 18
    frac = tmp_path / "frac.npz"
    np.savez(frac, input=np.full(38, 1.5), filter=np.ones(38))
    with pytest.raises(CnmlError, match="position must be an integer"):
        pycnml.load_quant_npz(str(frac))
    with pytest.raises(CnmlError, match="has 3 pairs, expected 19"):
        pycnml.save_quant_npz(str(tmp_path / "x.npz"), [(0, 1.0)] * 3, [(0, 1.0)] * 3)


# --------------------------------------------------------------------------- misuse
def one_conv_net(with_params=True):
    net = pycnml.CnmlNet()
    net.setInputShape(1, 2, 4, 4)
    net.createConvLayer("conv1_1", 3, 3, 1, 1, 1, QuantParam(0, 1.0))
    net.createReLuLayer("relu1_1")
    if with_params:
        net.loadParams(0, np.zeros(54), np.zeros(3), QuantParam(0, 1.0))
    return net


def test_error_wrong_filter_and_bias_sizes():
    net = one_conv_net(with_params=False)
    with pytest.raises(CnmlError, match=r"filter has 50 values, expected 54 = 3 x 2 x 3 x 3"):
        net.loadParams(0, np.zeros(50), np.zeros(3), QuantParam(0, 1.0))
    with pytest.raises(CnmlError, match=r"bias has 4 values, expected 3"):
        net.loadParams(0, np.zeros(54), np.zeros(4), QuantParam(0, 1.0))
    with pytest.raises(CnmlError, match=r"relu1_1.*has no parameters"):
        net.loadParams(1, np.zeros(54), np.zeros(3), QuantParam(0, 1.0))


def test_error_wrong_input_size():
    net = one_conv_net()
    with pytest.raises(CnmlError, match=r"got 31 values, expected 32 = 1 x 2 x 4 x 4"):
        net.setInputData(np.zeros(31))


def test_error_forward_before_params_names_layer():
    net = one_conv_net(with_params=False)
    net.setInputData(np.zeros(32))
    with pytest.raises(CnmlError, match=r"layer 0 'conv1_1' has no parameters.*loadParams\(0"):
        net.forward()


def test_error_forward_before_input_and_output_before_forward():
    net = one_conv_net()
    with pytest.raises(CnmlError, match="no input data; call setInputData"):
        net.forward()
    with pytest.raises(CnmlError, match=r"call forward\(\) first"):
        net.getOutputData()
    with pytest.raises(CnmlError, match="no layers"):
        empty = pycnml.CnmlNet()
        empty.setInputShape(1, 1, 1, 1)
        empty.setInputData([1.0])
        empty.forward()


@pytest.mark.parametrize("call", ["getLayerName", "needToBeQuantized"])
@pytest.mark.parametrize("idx", [2, -1, 7])
def test_error_unknown_layer_index(call, idx):
    net = one_conv_net()
    with pytest.raises(CnmlError, match=rf"unknown layer index {idx}.*valid: 0\.\.1"):
        getattr(net, call)(idx)
    with pytest.raises(CnmlError, match="unknown layer index"):
        net.loadParams(idx, [], [], QuantParam(0, 1.0))


def test_error_missing_quant_params():
    net = pycnml.CnmlNet()
    net.setInputShape(1, 2, 4, 4)
    with pytest.raises(CnmlError, match=r"'conv1'.*input_quant is missing"):
        net.createConvLayer("conv1", 3, 3, 1, 1, 1, None)
    with pytest.raises(CnmlError, match=r"'fc'.*input_quant is missing"):
        net.createMlpLayer("fc", 3, None)
    with pytest.raises(CnmlError, match="must be a pycnml.QuantParam"):
        net.createMlpLayer("fc", 3, 1.5)
    net = one_conv_net(with_params=False)
    with pytest.raises(CnmlError, match="filter_quant is missing"):
        net.loadParams(0, np.zeros(54), np.zeros(3), None)
    with pytest.raises(CnmlError, match="scale must be a finite positive"):
        QuantParam(0, -1.0)
    with pytest.raises(CnmlError, match="position must be an integer"):
        QuantParam(2.5, 1.0)
    with pytest.raises(CnmlError, match=r"filter_params\[1\] is missing"):
        pycnml.save_quant_npz(os.devnull, [(0, 1.0)] * 2, [(0, 1.0), None], None)


@pytest.mark.parametrize("kind", ["float64", "float32", "int", "list"])
def test_load_params_in_slices_is_the_whole_fp32_cast_then_int8(monkeypatch, kind):
    """loadParams quantises a slice at a time: the INT8 filter equals quantize() of the
    whole filter cast to float32 (the binding's float*), slice edges included. float64
    values a float32 rounding away from a rounding tie tell the fp32 cast from none."""
    rng = np.random.default_rng(5)
    w = rng.uniform(-1, 1, (32, 16, 3, 3))          # 4608 values, 5 slices of 1000
    wq = QuantParam(-7, 1.0)                         # codes of 1/128: w * 128
    # ties of the float64 value that float32 rounding moves off the tie (and back)
    w.ravel()[::7] = (np.arange(w.size)[::7] % 200 - 100 + 0.5) / 128 + 2.0 ** -40
    w = {"float64": w, "float32": w.astype(np.float32), "int": np.rint(w).astype(np.int64),
         "list": w}[kind]
    expected = pycnml.quantize(np.asarray(w, dtype=np.float32).ravel(), wq.position,
                               wq.scale).reshape(32, -1)
    assert not np.array_equal(expected, pycnml.quantize(np.asarray(w, np.float64).ravel(),
                                                        wq.position, wq.scale).reshape(32, -1)) \
        or kind in ("int", "float32"), "the fixture must tell the float32 cast from none"
    monkeypatch.setattr(pycnml, "_SLICE", 1000)
    net = pycnml.CnmlNet(1, pycnml.MLU270)
    net.setInputShape(1, 16, 5, 5)
    net.createConvLayer("conv", 32, 3, 1, 1, 1, QuantParam(0, 1.0))
    flat = list(np.asarray(w).ravel()) if kind == "list" else np.asarray(w).ravel()
    net.loadParams(0, flat, np.zeros(32), wq)
    assert net._layers[0].w.dtype == np.int8
    assert np.array_equal(net._layers[0].w, expected)


def test_error_layer_before_input_shape_and_after_load():
    net = pycnml.CnmlNet()
    with pytest.raises(CnmlError, match=r"call setInputShape\(n, c, h, w\) first"):
        net.createReLuLayer("relu")
    with pytest.raises(CnmlError, match="setInputShape"):
        net.setInputData([1.0])
    net = one_conv_net()
    with pytest.raises(CnmlError, match="after loadParams"):
        net.createReLuLayer("late")
    with pytest.raises(CnmlError, match="before any layer"):
        net.setInputShape(1, 2, 4, 4)


def test_error_empty_output_and_bad_config():
    net = pycnml.CnmlNet()
    net.setInputShape(1, 1, 2, 2)
    with pytest.raises(CnmlError, match="output would be empty"):
        net.createConvLayer("conv", 1, 3, 1, 1, 0, QuantParam(0, 1.0))
    with pytest.raises(CnmlError, match="output would be empty"):
        net.createPoolingLayer("pool", 3, 1)
    with pytest.raises(CnmlError, match="stride must be an integer >= 1"):
        net.createConvLayer("conv", 1, 1, 0, 1, 0, QuantParam(0, 1.0))
    with pytest.raises(CnmlError, match=r"holds 5 values but the input \[1, 1, 2, 2\] holds 4"):
        net.createFlattenLayer("flat", [1, 5, 1, 1])
    with pytest.raises(CnmlError, match="core_version"):
        pycnml.CnmlNet(1, "MLU100")
    assert pycnml.CnmlNet(4, pycnml.MLU220).core_version == pycnml.MLU220
    assert net.size() == 0  # failed creations add nothing


def test_batch_of_two_equals_two_single_runs():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 6, 6))
    w1, w2 = rng.standard_normal((4, 3, 3, 3)) * 0.2, rng.standard_normal((5, 36)) * 0.2
    q1, q2 = QuantParam(-5, 1.3), QuantParam(-6, 1.7)

    def run(xb):
        net = pycnml.CnmlNet()
        net.setInputShape(*xb.shape)
        net.createConvLayer("conv", 4, 3, 2, 1, 1, q1)
        net.createFlattenLayer("flat", [xb.shape[0], 36, 1, 1])
        net.createMlpLayer("fc", 5, q2)
        net.loadParams(0, w1.ravel(), np.zeros(4), qp_of(w1))
        net.loadParams(2, w2.ravel(), np.ones(5), qp_of(w2))
        net.setInputData(xb.ravel())
        net.forward()
        return net.getOutputData()

    assert run(x) == run(x[:1]) + run(x[1:])
