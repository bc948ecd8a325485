"""Checks for labkit/engine/conv_algos.py: every algorithm against the plain definition.

Error measure everywhere: rel = max|got - want| / max|want| (max-norm relative error).
float64: rel <= 1e-9 for every algorithm.
float32 (3x3, pad 1, N(0,1) data, weights scaled 1/sqrt(9*Cin); observed errors in brackets):
    img2col, Winograd F(2x2,3x3), FFT (both modes), weight grads:  5e-6   [1e-7 .. 6e-7]
    Winograd F(4x4,3x3):                              5e-5   [1.5e-6 .. 4e-6]
F(4x4) is ~10x less accurate than F(2x2): its transforms hold 8, 5, 4 and 1/24, 1/6,
so the rounding of transformed tiles is amplified before the inverse transform.
"""
import numpy as np
import pytest
from scipy.signal import correlate

from labkit.engine import conv_algos as ca

F64_TOL = 1e-9
F32_TOL = {"img2col": 5e-6, "wino2": 5e-6, "wino4": 5e-5, "fft": 5e-6, "fft_spectrum": 5e-6, "weight": 5e-6}


def assert_close(name, got, want, tol):
    """Fail with a message that says what was compared, how far off, where, and the bar."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    scale = max(float(np.abs(want).max()), 1e-300) if want.size else 1.0
    rel = float(diff.max()) / scale if diff.size else 0.0
    if not rel <= tol:
        idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise AssertionError(
            f"{name}: relative error {rel:.3e} > threshold {tol:.1e}; worst index {tuple(int(i) for i in idx)}: "
            f"got {got[idx]!r}, expected {want[idx]!r} (rel = max|got-want| / max|want|, scale {scale:.3e})")
    return rel


# (N, Cin, Cout, H, W, K, pad, stride)
CASES = [
    (1, 3, 4, 7, 9, 3, 1, 1),
    (2, 2, 5, 5, 5, 3, 0, 1),
    (2, 3, 2, 1, 1, 3, 1, 1),      # 1x1 input, output 1x1
    (1, 4, 3, 7, 9, 3, 2, 1),      # pad 2 > K-1: input grad needs a crop
    (1, 5, 6, 11, 13, 3, 1, 1),    # several Winograd tiles, odd sizes
    (2, 3, 4, 9, 7, 5, 2, 1),
    (1, 3, 2, 5, 5, 5, 0, 1),
    (2, 2, 3, 7, 9, 1, 0, 1),
    (1, 2, 3, 5, 5, 1, 1, 1),
    (1, 2, 3, 1, 1, 1, 0, 1),
    (2, 3, 4, 7, 9, 3, 1, 2),      # stride 2: img2col only
    (1, 2, 3, 9, 8, 5, 2, 2),
    (2, 3, 2, 6, 6, 3, 0, 2),
]

METHODS = {  # name: (forward, input grad, supports(K, stride))
    "img2col": (lambda x, w, b, p, s: ca.conv2d_img2col(x, w, b, p, s), ca.conv2d_input_grad_img2col,
                lambda k, s: True),
    "wino2": (lambda x, w, b, p, s: ca.conv2d_winograd(x, w, b, p), ca.conv2d_input_grad_winograd,
              lambda k, s: k == 3 and s == 1),
    "wino4": (lambda x, w, b, p, s: ca.conv2d_winograd4(x, w, b, p), ca.conv2d_input_grad_winograd4,
              lambda k, s: k == 3 and s == 1),
    "fft": (lambda x, w, b, p, s: ca.conv2d_fft(x, w, b, p, s), ca.conv2d_input_grad_fft,
            lambda k, s: s == 1),
    "fft_spectrum": (lambda x, w, b, p, s: ca.conv2d_fft(x, w, b, p, s, mode="spectrum"),
                     lambda dy, w, p, s, shp: ca.conv2d_input_grad_fft(dy, w, p, s, shp, mode="spectrum"),
                     lambda k, s: s == 1),
}

PARAMS = [pytest.param(m, c, id=f"{m}-N{c[0]}C{c[1]}O{c[2]}-{c[3]}x{c[4]}-K{c[5]}p{c[6]}s{c[7]}")
          for m in METHODS for c in CASES if METHODS[m][2](c[5], c[7])]


def make(case, seed=0, dtype=np.float64):
    n, cin, cout, h, w_, k, pad, stride = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin, h, w_))
    w = rng.standard_normal((cin, k, k, cout)) / np.sqrt(cin * k * k)
    b = rng.standard_normal(cout)
    ho, wo = (h + 2 * pad - k) // stride + 1, (w_ + 2 * pad - k) // stride + 1
    dy = rng.standard_normal((n, cout, ho, wo))
    return [a.astype(dtype) for a in (x, w, b, dy)]


# ----------------------------------------------------------------------------- the reference itself
@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_forward_matches_scipy_correlate(case):
    x, w, b, _ = make(case)
    pad, s = case[6], case[7]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    want = np.empty_like(ca.conv2d_reference(x, w, b, pad, s))
    for n in range(x.shape[0]):
        for o in range(w.shape[3]):
            full = sum(correlate(xp[n, c], w[c, :, :, o], mode="valid") for c in range(x.shape[1]))
            want[n, o] = full[::s, ::s] + b[o]
    assert_close("conv2d_reference vs scipy.signal.correlate", ca.conv2d_reference(x, w, b, pad, s), want, F64_TOL)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_grads_are_jacobian_transposes(case):
    """conv is linear: build its dense matrix J column by column from conv2d_reference
    (x = unit vectors), then dx = J^T dy; same for w (dw = J_w^T dy) and db = sum dy."""
    x, w, b, dy = make(case)
    pad, s = case[6], case[7]
    d = x.size
    basis = np.eye(d).reshape((d * x.shape[0],) + x.shape[1:])
    jt = ca.conv2d_reference(basis, w, None, pad, s).reshape(d, -1)       # rows: d y / d x_i
    assert_close("reference dx vs J^T dy", ca.conv2d_input_grad_reference(dy, w, pad, s, x.shape),
                 (jt @ dy.ravel()).reshape(x.shape), F64_TOL)
    dw_want = np.array([np.vdot(ca.conv2d_reference(x, e.reshape(w.shape), None, pad, s), dy)
                        for e in np.eye(w.size)]).reshape(w.shape)
    dw, db = ca.conv2d_weight_grad_reference(x, dy, case[5], pad, s)
    assert_close("reference dw vs J_w^T dy", dw, dw_want, F64_TOL)
    assert_close("reference db vs sum(dy)", db, dy.sum(axis=(0, 2, 3)), F64_TOL)


# ----------------------------------------------------------------------------- float64, all methods
@pytest.mark.parametrize("method,case", PARAMS)
def test_forward_float64(method, case):
    x, w, b, _ = make(case)
    got = METHODS[method][0](x, w, b, case[6], case[7])
    assert got.dtype == np.float64
    assert_close(f"{method} forward y", got, ca.conv2d_reference(x, w, b, case[6], case[7]), F64_TOL)


@pytest.mark.parametrize("method,case", PARAMS)
def test_input_grad_float64(method, case):
    x, w, b, dy = make(case)
    pad, s = case[6], case[7]
    dx = METHODS[method][1](dy, w, pad, s, x.shape)
    assert dx.dtype == np.float64
    assert_close(f"{method} input grad dx", dx, ca.conv2d_input_grad_reference(dy, w, pad, s, x.shape), F64_TOL)
    # adjoint identity <conv(x), dy> == <x, dx>  (no bias: the map must be linear)
    lhs = np.vdot(ca.conv2d_reference(x, w, None, pad, s), dy)
    rhs = np.vdot(x, dx)
    assert_close(f"{method} adjoint <conv(x),dy> vs <x,dx>", rhs, lhs, F64_TOL)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_weight_grad_float64(case):
    x, w, b, dy = make(case)
    k, pad, s = case[5], case[6], case[7]
    dw, db = ca.conv2d_weight_grad(x, dy, k, pad, s)
    dw_ref, db_ref = ca.conv2d_weight_grad_reference(x, dy, k, pad, s)
    assert dw.shape == w.shape and dw.dtype == np.float64
    assert_close("img2col weight grad dw", dw, dw_ref, F64_TOL)
    assert_close("img2col bias grad db", db, db_ref, F64_TOL)
    # adjoint identity in w: <conv(x, w), dy> == <w, dw>
    assert_close("adjoint <conv(x,w),dy> vs <w,dw>", np.vdot(w, dw),
                 np.vdot(ca.conv2d_reference(x, w, None, pad, s), dy), F64_TOL)


# ----------------------------------------------------------------------------- float32
F32_CASES = [(2, 64, 32, 15, 17, 3, 1, 1), (1, 16, 16, 9, 7, 3, 1, 1), (1, 128, 64, 8, 8, 3, 1, 1)]


@pytest.mark.parametrize("case", F32_CASES, ids=str)
@pytest.mark.parametrize("method", list(METHODS))
def test_float32_within_method_tolerance(method, case):
    x, w, b, dy = make(case, seed=1)
    x32, w32, b32, dy32 = (a.astype(np.float32) for a in (x, w, b, dy))
    pad, s = case[6], case[7]
    fwd, dgrad, _ = METHODS[method]
    y = fwd(x32, w32, b32, pad, s)
    dx = dgrad(dy32, w32, pad, s, x.shape)
    assert y.dtype == np.float32 and dx.dtype == np.float32, (y.dtype, dx.dtype)
    tol = F32_TOL[method]
    assert_close(f"{method} float32 y", y, ca.conv2d_reference(x, w, b, pad, s), tol)
    assert_close(f"{method} float32 dx", dx, ca.conv2d_input_grad_reference(dy, w, pad, s, x.shape), tol)
    if method == "img2col":
        dw, db = ca.conv2d_weight_grad(x32, dy32, 3, pad, s)
        assert dw.dtype == np.float32
        dw_ref, db_ref = ca.conv2d_weight_grad_reference(x, dy, 3, pad, s)
        assert_close("img2col float32 dw", dw, dw_ref, F32_TOL["weight"])
        assert_close("img2col float32 db", db, db_ref, F32_TOL["weight"])


def test_winograd4_less_accurate_than_winograd2_in_float32():
    x, w, b, _ = make(F32_CASES[0], seed=2)
    ref = ca.conv2d_reference(x, w, b, 1)
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    e2 = assert_close("F(2x2) float32", ca.conv2d_winograd(x32, w32, b32, 1), ref, F32_TOL["wino2"])
    e4 = assert_close("F(4x4) float32", ca.conv2d_winograd4(x32, w32, b32, 1), ref, F32_TOL["wino4"])
    assert e4 > 2 * e2, f"expected F(4x4) error {e4:.2e} to exceed twice the F(2x2) error {e2:.2e}"


# ----------------------------------------------------------------------------- Winograd details
@pytest.mark.parametrize("m", [2, 4])
def test_winograd_1d_identity(m):
    """A^T [(G g) * (B^T d)] equals the 1-D correlation of an (m+2)-tile d with a 3-tap g."""
    t = ca._WINO[m]
    rng = np.random.default_rng(3)
    d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
    got = np.array(t["AT"]) @ ((np.array(t["G"]) @ g) * (np.array(t["BT"]) @ d))
    assert_close(f"F({m},3) 1-D identity", got, np.correlate(d, g, mode="valid"), 1e-12)


@pytest.mark.parametrize("m,fwd,dgrad", [(2, ca.conv2d_winograd, ca.conv2d_input_grad_winograd),
                                         (4, ca.conv2d_winograd4, ca.conv2d_input_grad_winograd4)])
def test_winograd_cached_filter_transform(m, fwd, dgrad):
    case = (2, 3, 4, 7, 9, 3, 1, 1)
    x, w, b, dy = make(case)
    U = ca.winograd_filter_transform(w, m)
    assert U.shape == ((m + 2) ** 2, 4, 3)
    assert_close(f"F({m}) forward with cached U", fwd(x, None, b, 1, U=U), ca.conv2d_reference(x, w, b, 1), F64_TOL)
    Ur = ca.winograd_filter_transform(ca.rotate_filter(w), m)
    assert_close(f"F({m}) dx with cached U", dgrad(dy, w, 1, 1, x.shape, U=Ur),
                 ca.conv2d_input_grad_reference(dy, w, 1, 1, x.shape), F64_TOL)
    with pytest.raises(ValueError):
        fwd(x, None, b, 1, U=ca.winograd_filter_transform(w, 6 - m))   # the other tile size


def test_unsupported_arguments_are_rejected():
    x, w, b, dy = make((1, 2, 3, 7, 7, 5, 1, 1))
    with pytest.raises(ValueError, match="3x3"):
        ca.conv2d_winograd(x, w, b, 1)
    with pytest.raises(ValueError, match="stride"):
        ca.conv2d_fft(x, w, b, 1, stride=2)
    with pytest.raises(ValueError, match="stride"):
        ca.conv2d_input_grad_fft(dy, w, 1, 2, x.shape)
    with pytest.raises(ValueError, match="empty output"):
        ca.conv2d_img2col(x[:, :, :2, :2], w, b, 0, 1)


# ----------------------------------------------------------------------------- negative control
def test_negative_control_flipped_kernel_fails():
    """A classic bug (true convolution instead of correlation: flipped kernel) must be caught
    by the same comparison, and the message must name the tensor, error, threshold and index."""
    case = (1, 3, 4, 7, 9, 3, 1, 1)
    x, w, b, dy = make(case)
    ref = ca.conv2d_reference(x, w, b, 1)
    wrong = ca.conv2d_img2col(x, w[:, ::-1, ::-1, :], b, 1, 1)
    with pytest.raises(AssertionError) as e:
        assert_close("img2col forward y (flipped kernel)", wrong, ref, F64_TOL)
    msg = str(e.value)
    for part in ("img2col forward y (flipped kernel)", "relative error", "threshold 1.0e-09", "worst index"):
        assert part in msg, msg
    # a wrong input gradient (forgetting to swap Cin/Cout is impossible here, so: no rotation)
    bad_dx = ca.conv2d_img2col(dy, np.ascontiguousarray(w.transpose(3, 1, 2, 0)), None, 1, 1)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close("dx without 180-degree rotation", bad_dx,
                     ca.conv2d_input_grad_reference(dy, w, 1, 1, x.shape), F64_TOL)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("cin,cout,h,w", [(3, 4, 17, 13),     # odd sizes, cropped tiles
                                          (3, 40, 6, 5)],    # few tiles, many channels
                         ids=str)
@pytest.mark.parametrize("threads", [False, True])
def test_winograd_bias_and_relu_in_the_output_stage(m, cin, cout, h, w, threads):
    """The bias enters through the transformed products (M[a+1] += b, A^T e_1 = 1) and the
    ReLU through the scatter copy: both output-stage splits, with and without the engine's
    threads, equal max(reference + b, 0) in float64 (1e-9); without the bias they differ."""
    from labkit.engine.perf import active_pool, engine_threads
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, cin, h, w))
    wt = rng.standard_normal((cin, 3, 3, cout)) / np.sqrt(9 * cin)
    b = rng.standard_normal(cout)
    want = np.maximum(ca.conv2d_reference(x, wt, b, 1), 0)
    with engine_threads(threads):
        got = ca._winograd(x, wt, b, 1, m, None, active_pool(), relu=True)
        no_bias = ca._winograd(x, wt, None, 1, m, None, active_pool(), relu=True)
    assert_close(f"F({m}x{m}) bias + ReLU", got, want, 1e-9)
    with pytest.raises(AssertionError):
        assert_close("without the bias", no_bias, want, 1e-9)
