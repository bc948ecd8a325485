"""Convolution algorithms in pure NumPy: reference, img2col, Winograd, FFT.

Conventions (shared by every function here)
    x   activations, NCHW: (N, Cin, H, W)
    w   weights, the lab's layout: (Cin, K, K, Cout)
    b   bias (Cout,) or None
    y   output (N, Cout, Ho, Wo) with Ho = (H + 2*pad - K)//stride + 1 (same for W)

    y[n,o,i,j] = b[o] + sum_{c,kh,kw} xp[n, c, i*s+kh, j*s+kw] * w[c, kh, kw, o]

where xp is x zero-padded by `pad` on every side.  This is a cross-correlation
(the deep-learning "convolution").  Every function keeps the dtype of its input
(float32 for speed, float64 for checks).

Input gradients for stride 1 reuse the forward routines: dx is the "full"
convolution of dy with the filter rotated by 180 degrees and with Cin/Cout
swapped, i.e. conv(dy, rotate_filter(w), pad=K-1-pad).  See rotate_filter.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from labkit.engine.perf import run_split, split_ranges  # noqa: F401 (split_ranges: tests)

__all__ = [
    "conv2d_reference", "conv2d_input_grad_reference", "conv2d_weight_grad_reference",
    "conv2d_img2col", "conv2d_input_grad_img2col", "conv2d_weight_grad", "im2col",
    "rotate_filter", "winograd_filter_transform",
    "conv2d_winograd", "conv2d_winograd4", "winograd_cl", "channels_last", "is_channels_last",
    "conv2d_input_grad_winograd", "conv2d_input_grad_winograd4",
    "conv2d_fft", "conv2d_input_grad_fft",
]


def _out_size(h, k, pad, stride):
    ho = (h + 2 * pad - k) // stride + 1
    if ho < 1:
        raise ValueError(f"empty output: size {h}, kernel {k}, pad {pad}, stride {stride}")
    return ho


def pad_into(x, pad, extra_h=0, extra_w=0, pool=None):
    """x (N,C,H,W) zero-padded by ``pad`` (plus extra rows/columns at the bottom/right),
    copied channel range by channel range (in parallel with a pool)."""
    if pad == 0 and extra_h == 0 and extra_w == 0:
        return x
    n, c, h, wd = x.shape
    xp = np.empty((n, c, h + 2 * pad + extra_h, wd + 2 * pad + extra_w), dtype=x.dtype)

    def fill(c0, c1):
        part = xp[:, c0:c1]
        part[:, :, :pad] = 0
        part[:, :, pad + h:] = 0
        part[:, :, pad:pad + h, :pad] = 0
        part[:, :, pad:pad + h, pad + wd:] = 0
        part[:, :, pad:pad + h, pad:pad + wd] = x[:, c0:c1]
    run_split(pool, fill, c)
    return xp


def _add_bias(y, b):
    if b is not None:
        y += b.astype(y.dtype, copy=False).reshape(1, -1, 1, 1)
    return y


# ----------------------------------------------------------------------------- reference
def conv2d_reference(x, w, b, pad, stride=1):
    """Plain definition, loop over the K*K kernel offsets only.

    x (N,Cin,H,W), w (Cin,K,K,Cout), b (Cout,) or None -> y (N,Cout,Ho,Wo);
    y[n,o,i,j] = b[o] + sum_{c,kh,kw} xp[n,c,i*s+kh,j*s+kw] w[c,kh,kw,o].
    Meant for tests (use float64)."""
    n, c, h, wd = x.shape
    k = w.shape[1]
    ho, wo = _out_size(h, k, pad, stride), _out_size(wd, k, pad, stride)
    xp = pad_into(x, pad)
    y = np.zeros((n, w.shape[3], ho, wo), dtype=x.dtype)
    for kh in range(k):
        for kw in range(k):
            patch = xp[:, :, kh:kh + stride * (ho - 1) + 1:stride, kw:kw + stride * (wo - 1) + 1:stride]
            y += np.einsum("nchw,co->nohw", patch, w[:, kh, kw, :])
    return _add_bias(y, b)


def conv2d_input_grad_reference(dy, w, pad, stride, x_shape):
    """dx (x_shape) = d<y,dy>/dx: scatter dy back through every kernel offset.

    dxp[n,c,i*s+kh,j*s+kw] += sum_o dy[n,o,i,j] w[c,kh,kw,o]; dx = dxp without padding."""
    n, c, h, wd = x_shape
    k = w.shape[1]
    ho, wo = dy.shape[2:]
    dxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), dtype=dy.dtype)
    for kh in range(k):
        for kw in range(k):
            dxp[:, :, kh:kh + stride * (ho - 1) + 1:stride, kw:kw + stride * (wo - 1) + 1:stride] += \
                np.einsum("nohw,co->nchw", dy, w[:, kh, kw, :])
    return dxp[:, :, pad:pad + h, pad:pad + wd]


def conv2d_weight_grad_reference(x, dy, k, pad, stride):
    """dw[c,kh,kw,o] = sum_{n,i,j} xp[n,c,i*s+kh,j*s+kw] dy[n,o,i,j]; db[o] = sum dy[n,o,:,:]."""
    ho, wo = dy.shape[2:]
    xp = pad_into(x, pad)
    dw = np.zeros((x.shape[1], k, k, dy.shape[1]), dtype=x.dtype)
    for kh in range(k):
        for kw in range(k):
            patch = xp[:, :, kh:kh + stride * (ho - 1) + 1:stride, kw:kw + stride * (wo - 1) + 1:stride]
            dw[:, kh, kw, :] = np.einsum("nchw,nohw->co", patch, dy)
    return dw, dy.sum(axis=(0, 2, 3))


# ----------------------------------------------------------------------------- img2col
def im2col(x, k, pad, stride):
    """x (N,C,H,W) -> cols (N, C*K*K, Ho*Wo), rows ordered (c, kh, kw) like w.reshape(C*K*K, Cout).

    cols[n,(c,kh,kw),(i,j)] = xp[n,c,i*s+kh,j*s+kw].  Built from K*K shifted (strided)
    slices of the padded input: one copy each, no loop over pixels or channels."""
    n, c, h, wd = x.shape
    ho, wo = _out_size(h, k, pad, stride), _out_size(wd, k, pad, stride)
    xp = pad_into(x, pad)
    cols = np.empty((n, c, k, k, ho, wo), dtype=x.dtype)
    for kh in range(k):
        for kw in range(k):
            cols[:, :, kh, kw] = xp[:, :, kh:kh + stride * (ho - 1) + 1:stride,
                                    kw:kw + stride * (wo - 1) + 1:stride]
    return cols.reshape(n, c * k * k, ho * wo), ho, wo


def conv2d_img2col(x, w, b, pad, stride=1, pool=None, relu=False, channels_last_out=False):
    """img2col + one GEMM.  x (N,Cin,H,W), w (Cin,K,K,Cout) -> y (N,Cout,Ho,Wo).

    y[n] = w.reshape(Cin*K*K, Cout).T @ cols[n]  (Cout, Ho*Wo); ``relu``: max(y, 0) too.
    With a pool (``labkit.engine.perf``), output-channel ranges run in parallel.
    ``channels_last_out``: compute y[n]^T = cols[n]^T @ w (Ho*Wo, Cout) instead (pixel ranges
    in parallel) and return it as an (N, Cout, Ho, Wo) view of an (N, Ho, Wo, Cout) array."""
    cin, k, _, cout = w.shape
    n = x.shape[0]
    cols, ho, wo = im2col(x, k, pad, stride)
    bias = None if b is None else b.astype(x.dtype, copy=False)
    if channels_last_out:
        wk = w.reshape(cin * k * k, cout).astype(x.dtype, copy=False)
        y = np.empty((n, ho * wo, cout), dtype=x.dtype)

        def pixels(p0, p1):
            for i in range(n):
                part = y[i, p0:p1]
                np.matmul(cols[i, :, p0:p1].T, wk, out=part)
                if bias is not None:
                    part += bias
                if relu:
                    np.maximum(part, 0, out=part)
        run_split(pool, pixels, ho * wo)
        return y.reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)
    wm = w.reshape(cin * k * k, cout).T.astype(x.dtype, copy=False)
    y = np.empty((n, cout, ho * wo), dtype=x.dtype)

    def rows(o0, o1):     # output channels o0..o1
        np.matmul(wm[o0:o1], cols, out=y[:, o0:o1])
        if bias is not None:
            y[:, o0:o1] += bias[o0:o1].reshape(-1, 1)
        if relu:            # while this range is still in cache
            np.maximum(y[:, o0:o1], 0, out=y[:, o0:o1])
    run_split(pool, rows, cout)
    return y.reshape(n, cout, ho, wo)


def conv2d_input_grad_img2col(dy, w, pad, stride, x_shape, pool=None):
    """Input gradient by GEMM + col2im, any stride.  dy (N,Cout,Ho,Wo) -> dx x_shape.

    dcols[n] = w.reshape(Cin*K*K, Cout) @ dy[n]; col2im adds each (kh,kw) slice of
    dcols into the shifted, strided window of dxp (loop over K*K offsets only).
    With a pool (``labkit.engine.perf``), input-channel ranges run in parallel."""
    n, c, h, wd = x_shape
    cin, k, _, cout = w.shape
    ho, wo = dy.shape[2:]
    wm = w.reshape(cin * k * k, cout).astype(dy.dtype, copy=False)
    dy_m = dy.reshape(n, cout, ho * wo)
    dxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), dtype=dy.dtype)

    def channels(c0, c1):
        dcols = np.matmul(wm[c0 * k * k:c1 * k * k], dy_m).reshape(n, c1 - c0, k, k, ho, wo)
        for kh in range(k):
            for kw in range(k):
                dxp[:, c0:c1, kh:kh + stride * (ho - 1) + 1:stride,
                    kw:kw + stride * (wo - 1) + 1:stride] += dcols[:, :, kh, kw]
    run_split(pool, channels, c)
    return dxp if pad == 0 else np.ascontiguousarray(dxp[:, :, pad:pad + h, pad:pad + wd])


def conv2d_weight_grad(x, dy, k, pad, stride=1, pool=None):
    """Weight/bias gradients via img2col -> (dw (Cin,K,K,Cout), db (Cout,)).

    dw.reshape(Cin*K*K, Cout) = sum_n cols[n] @ dy[n].T ;  db = dy.sum((0,2,3)).
    With a pool (``labkit.engine.perf``), row ranges of dw run in parallel."""
    n, cin = x.shape[:2]
    cout = dy.shape[1]
    cols, ho, wo = im2col(x, k, pad, stride)
    dyr = dy.reshape(n, cout, ho * wo)
    if n == 1:
        a, b = cols[0], dyr[0]
    else:   # one GEMM over the stacked batch: (CKK, N*HW) @ (N*HW, Cout)
        a = cols.transpose(1, 0, 2).reshape(cols.shape[1], -1)
        b = dyr.transpose(1, 0, 2).reshape(cout, -1)
    dw = np.empty((a.shape[0], cout), dtype=np.result_type(x.dtype, dy.dtype))

    def rows(r0, r1):       # rows (c, kh, kw) r0..r1 of dw
        np.matmul(a[r0:r1], b.T, out=dw[r0:r1])
    run_split(pool, rows, a.shape[0])
    return dw.reshape(cin, k, k, cout), dy.sum(axis=(0, 2, 3))


# ----------------------------------------------------------------------------- shared helpers
def rotate_filter(w):
    """w (Cin,K,K,Cout) -> (Cout,K,K,Cin) rotated 180 degrees, in/out swapped (contiguous).

    For stride 1: dx = conv(dy, rotate_filter(w), pad=K-1-pad)."""
    return np.ascontiguousarray(w[:, ::-1, ::-1, :].transpose(3, 1, 2, 0))


def full_conv_input_grad(conv, k, pad, x_shape):
    """Stride-1 input gradient from ``conv(p)``: dy convolved with the rotated filter and
    padding p. Called with p = K-1-pad; a negative K-1-pad becomes a crop of the p=0 result."""
    h, wd = x_shape[2:]
    q = k - 1 - pad
    dx = conv(max(q, 0))
    if q < 0:
        dx = np.ascontiguousarray(dx[:, :, -q:-q + h, -q:-q + wd])
    return dx


def _input_grad_via_forward(fwd, dy, w, pad, stride, x_shape, **kw):
    """Stride-1 input gradient with the forward routine ``fwd``."""
    if stride != 1:
        raise ValueError("this input gradient supports stride 1 only (use conv2d_input_grad_img2col)")
    wr = rotate_filter(w) if kw.get("U") is None else None
    dx = full_conv_input_grad(lambda p: fwd(dy, wr, None, p, **kw), w.shape[1], pad, x_shape)
    assert dx.shape == tuple(x_shape), (dx.shape, x_shape)
    return dx


# ----------------------------------------------------------------------------- Winograd
# F(m x m, 3x3): Y = A^T [ (G g G^T) * (B^T d B) ] A  on (m+2)x(m+2) input tiles.
_WINO = {
    2: dict(BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
            G=[[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
            AT=[[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: dict(BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
            G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
            AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


def _winograd_kron(m, dtype):
    """(kron(B^T, B^T), kron(A^T, A^T)): both 2-D transforms of F(m x m, 3x3) as matrices."""
    key = (m, np.dtype(dtype))
    if key not in _KRON:
        BT = np.array(_WINO[m]["BT"], dtype=np.float64)
        AT = np.array(_WINO[m]["AT"], dtype=np.float64)
        _KRON[key] = (np.kron(BT, BT).astype(dtype), np.kron(AT, AT).astype(dtype))
    return _KRON[key]


_KRON = {}


def winograd_filter_transform(w, m=2, dtype=None, channels_last=False):
    """U = G g G^T for every (c,o): w (Cin,3,3,Cout) -> U ((m+2)^2, Cout, Cin), contiguous
    (``channels_last``: ((m+2)^2, Cin, Cout), as ``winograd_cl`` takes it).

    Compute once per layer and pass as U= to conv2d_winograd / conv2d_winograd4 (forward) or,
    from rotate_filter(w), to the conv2d_input_grad_winograd* functions."""
    if w.shape[1:3] != (3, 3):
        raise ValueError(f"Winograd F({m}x{m},3x3) needs a 3x3 kernel, got {w.shape[1:3]}")
    G = np.array(_WINO[m]["G"], dtype=np.float64)
    a = m + 2
    cin, _, _, cout = w.shape
    g = w.astype(np.float64).transpose(1, 2, 3, 0).reshape(3, 3, cout * cin)   # g[i, j, (o, c)]
    u = np.matmul(G, np.matmul(G, g).transpose(1, 0, 2))      # u[l, k] = sum_j G[l,j] sum_i G[k,i] g[i,j]
    u = u.transpose(1, 0, 2).reshape(a * a, cout, cin)         # (k, l) -> k*a + l
    if channels_last:
        u = u.transpose(0, 2, 1)
    return np.ascontiguousarray(u, dtype=dtype or w.dtype)


CHUNK_BYTES = 256 << 10   # the least tile data (bytes) one thread transforms at a time


def is_channels_last(x):
    """Whether the (N, C, H, W) array x is a view of a C-contiguous (N, H, W, C) array
    (the engine's layout)."""
    return x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous


def channels_last(x):
    """x (N, C, H, W) -> (N, H, W, C), C-contiguous: a view when x is stored channels-last
    (a transposed view of such an array, as the engine's layers return), else one copy."""
    t = x.transpose(0, 2, 3, 1)
    return t if is_channels_last(x) else np.ascontiguousarray(t)


def pad_cl(x, pad, extra_h=0, extra_w=0, pool=None, mask=None):
    """x (N, H, W, C) zero-padded by ``pad`` (plus extra rows/columns at the bottom/right),
    copied by ranges of rows (in parallel with a pool); ``mask`` (like x): copy
    x * (mask > 0) instead (a ReLU's backward done by the copy that padding makes anyway)."""
    if pad == 0 and extra_h == 0 and extra_w == 0 and mask is None:
        return x
    n, h, wd, c = x.shape
    xp = np.empty((n, h + 2 * pad + extra_h, wd + 2 * pad + extra_w, c), dtype=x.dtype)
    xp[:, :pad] = 0
    xp[:, pad + h:] = 0

    def fill(r0, r1):
        part = xp[:, pad + r0:pad + r1]
        part[:, :, :pad] = 0
        part[:, :, pad + wd:] = 0
        if mask is None:
            part[:, :, pad:pad + wd] = x[:, r0:r1]
        else:
            np.multiply(x[:, r0:r1], mask[:, r0:r1] > 0, out=part[:, :, pad:pad + wd])
    run_split(pool, fill, h)
    return xp


def winograd_plan(cin, cout, th, tw, m, itemsize=4, workers=1):
    """How ``winograd_cl`` splits th x tw tiles of F(m x m, 3x3) -> (mode, rows per chunk).

    "rows": every thread takes a range of tile rows through all stages (gather, B^T d B,
    the a*a products, A^T M A, the scatter) in chunks of ``rows`` tile rows whose tiles
    (a*a x tiles x channels) stay in cache: no pass over a whole layer's tiles, no barrier.
    A chunk holds at least CHUNK_BYTES and at least half of U (each chunk reads U again).
    "channels": few tile rows for the threads (th < 4 per worker and uneven): the tiles
    of all rows are transformed first (by tile-row ranges), then the products and the output
    transform split by output-channel ranges (each thread reads all of V, part of U)."""
    a2 = (m + 2) ** 2
    if workers > 1 and th < 4 * workers and th % workers:
        return "channels", th
    per_row = a2 * tw * max(cin, cout) * itemsize
    chunk = max(CHUNK_BYTES, a2 * cin * cout * itemsize // 2)
    return "rows", max(1, chunk // per_row)


def winograd_cl(x, U, bias, pad, m, pool=None, relu=False, mask=None):
    """Winograd F(m x m, 3x3), stride 1, channels-last (the tuned engine's layout):
    x (N, H, W, Cin) C-contiguous, U (a*a, Cin, Cout) from
    ``winograd_filter_transform(w, m, channels_last=True)``, bias (Cout,) or None
    -> y (N, Ho, Wo, Cout), Ho = H + 2*pad - 2, a = m + 2.

    Per tile row chunk: T[i, j, tile, c] = xp[m*ti + i, m*tj + j, c] (one copy whose inner
    runs are Cin contiguous numbers), V = kron(B^T, B^T) @ T (one GEMM), M[k] = V[k] @ U[k]
    (a*a GEMMs), Y = kron(A^T, A^T) @ M (one GEMM), scattered to y (inner runs of Cout
    numbers). ``relu``: max(y, 0) in the scatter; the bias enters as M[a + 1] += b
    (kron(A^T, A^T) maps tile entry (1, 1) to all ones: A^T e_1 = 1 for F(2x2) and F(4x4)).
    ``mask`` (like x): convolve x * (mask > 0) (a ReLU's backward, in the padding copy)."""
    n, h, wd, c = x.shape
    a = m + 2
    if U.ndim != 3 or U.shape[:2] != (a * a, c):
        raise ValueError(f"transformed filter shape {U.shape} does not fit F({m}x{m},3x3) "
                         f"with Cin={c} (expected ({a * a}, {c}, Cout))")
    cout = U.shape[2]
    U = U.astype(x.dtype, copy=False)
    ho, wo = _out_size(h, 3, pad, 1), _out_size(wd, 3, pad, 1)
    th, tw = -(-ho // m), -(-wo // m)
    xp = pad_cl(x, pad, th * m - ho, tw * m - wo, pool, mask)   # (N, th*m+2, tw*m+2, C)
    KB, KA = _winograd_kron(m, x.dtype)
    y = np.empty((n, th * m, tw * m, cout), dtype=x.dtype)
    y6 = y.reshape(n, th, m, tw, m, cout)
    win = sliding_window_view(xp, (a, a), axis=(1, 2))[:, ::m, ::m]   # (N, th, tw, C, a, a)
    b = None if bias is None else bias.astype(x.dtype, copy=False)

    def transform_in(i, r0, r1, out=None):    # V (a*a, tiles, C) of tile rows r0..r1
        T = np.empty((a, a, r1 - r0, tw, c), dtype=x.dtype)
        np.copyto(T, win[i, r0:r1].transpose(3, 4, 0, 1, 2))
        V = np.matmul(KB, T.reshape(a * a, -1), out=out)
        return V.reshape(a * a, (r1 - r0) * tw, c)

    def transform_out(i, r0, r1, M, o0, o1):  # M (a*a, tiles, o) -> y[i, rows, :, o0:o1]
        if b is not None:
            M[a + 1] += b[o0:o1]
        Y = np.matmul(KA, M.reshape(a * a, -1)).reshape(m, m, r1 - r0, tw, o1 - o0)
        src, dst = Y.transpose(2, 0, 3, 1, 4), y6[i, r0:r1, :, :, :, o0:o1]
        if relu:
            np.maximum(src, 0, out=dst)
        else:
            np.copyto(dst, src)

    mode, step = winograd_plan(c, cout, th, tw, m, x.itemsize,
                               pool.workers if pool is not None else 1)
    if mode == "rows":
        def rows(r0, r1):
            for i in range(n):
                for s0 in range(r0, r1, step):
                    s1 = min(r1, s0 + step)
                    transform_out(i, s0, s1, np.matmul(transform_in(i, s0, s1), U), 0, cout)
        run_split(pool, rows, th)
    else:
        V = np.empty((n, a * a, th * tw * c), dtype=x.dtype)

        def vin(r0, r1):
            for i in range(n):
                transform_in(i, r0, r1, out=V[i, :, r0 * tw * c:r1 * tw * c])

        def outs(o0, o1):
            for i in range(n):
                M = np.matmul(V[i].reshape(a * a, th * tw, c), U[:, :, o0:o1])
                transform_out(i, 0, th, M, o0, o1)
        run_split(pool, vin, th)
        run_split(pool, outs, cout)
    if th * m != ho or tw * m != wo:
        y = np.ascontiguousarray(y[:, :ho, :wo])
    return y


def _winograd(x, w, b, pad, m, U=None, pool=None, relu=False, mask=None):
    """``winograd_cl`` for NCHW arrays: x (N, Cin, H, W), w (Cin, 3, 3, Cout) or U (a*a, Cout,
    Cin) from ``winograd_filter_transform(w, m)`` -> y (N, Cout, Ho, Wo), contiguous."""
    if U is None:
        U = winograd_filter_transform(w, m, x.dtype, channels_last=True)
    else:
        a = m + 2
        if U.ndim != 3 or U.shape[0] != a * a or U.shape[2] != x.shape[1]:
            raise ValueError(f"transformed filter shape {U.shape} does not fit "
                             f"F({m}x{m},3x3) with Cin={x.shape[1]}")
        U = np.ascontiguousarray(U.transpose(0, 2, 1))
    y = winograd_cl(channels_last(x), U, b, pad, m, pool, relu,
                    None if mask is None else channels_last(mask))
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def conv2d_winograd(x, w, b, pad, U=None):
    """Winograd F(2x2,3x3), stride 1.  x (N,Cin,H,W), w (Cin,3,3,Cout) -> (N,Cout,Ho,Wo).

    Overlapping 4x4 tiles (step 2), V = B^T d B, 16 GEMMs M[xi] = U[xi] @ V[xi] with
    U = G g G^T, Y = A^T M A per 2x2 output tile; odd sizes are padded up and cropped.
    Pass U=winograd_filter_transform(w, 2) to skip the filter transform (w may then be None).
    2.25x fewer multiplies than direct."""
    return _winograd(x, w, b, pad, 2, U)


def conv2d_winograd4(x, w, b, pad, U=None):
    """Winograd F(4x4,3x3), stride 1: 6x6 tiles (step 4), 36 GEMMs, 4x fewer multiplies
    than direct but larger float32 rounding error (transform entries up to 8 and 1/24).
    Same shapes/arguments as conv2d_winograd; U=winograd_filter_transform(w, 4)."""
    return _winograd(x, w, b, pad, 4, U)


def conv2d_input_grad_winograd(dy, w, pad, stride, x_shape, U=None):
    """dx = conv2d_winograd(dy, rotate_filter(w), pad=2-pad) (stride 1, cropped if pad > 2).

    U (optional) = winograd_filter_transform(rotate_filter(w), 2), cached by the layer."""
    return _input_grad_via_forward(conv2d_winograd, dy, w, pad, stride, x_shape, U=U)


def conv2d_input_grad_winograd4(dy, w, pad, stride, x_shape, U=None):
    """As conv2d_input_grad_winograd with F(4x4,3x3); U from winograd_filter_transform(rotate_filter(w), 4)."""
    return _input_grad_via_forward(conv2d_winograd4, dy, w, pad, stride, x_shape, U=U)


# ----------------------------------------------------------------------------- FFT
def conv2d_fft(x, w, b, pad, stride=1, mode="auto", mem_bytes=1 << 26):
    """FFT convolution, any K, stride 1.  x (N,Cin,H,W), w (Cin,K,K,Cout) -> (N,Cout,Ho,Wo).

    With P >= H+2p, Q >= W+2p (next fast FFT sizes; no wrap-around reaches the valid outputs)
    and X = rfft2(xp, s=(P, Q)):
        Y[n,o,u,v] = sum_c X[n,c,u,v] conj(Wf)[c,o,u,v],   y = irfft2(Y)[:Ho,:Wo]
        conj(Wf)[c,o,u,v] = sum_{kh,kw} w[c,kh,kw,o] e^{+2 pi i (u kh/P + v kw/Q)}
    mode="spectrum": textbook; conj(Wf) is built (in chunks of frequency rows, <= ~mem_bytes)
        and the channel sum is a batched complex matmul per frequency; cost ~ P*Q*Cin*Cout
        independent of K, but for N=1 it is memory-bound on the Cin*Cout*P*Q filter spectrum.
    mode="taps": the same sum reordered: Z[kh,kw] = w[:,kh,kw,:]^T @ X (one real GEMM with X
        viewed as real (Cin, 2*P*Qr)), then Y = sum_{kh,kw} phase[kh,kw] * Z[kh,kw].
        Cost ~ K*K*P*Q*Cin*Cout, as direct convolution, but at GEMM speed and without im2col.
    mode="auto": "taps" for K <= 3 (measured faster at all VGG shapes), else "spectrum"."""
    if stride != 1:
        raise ValueError("conv2d_fft supports stride 1 only")
    n, c, h, wd = x.shape
    cin, k, _, cout = w.shape
    xp = pad_into(x, pad)
    P, Q = xp.shape[2:]
    ho, wo = P - k + 1, Q - k + 1
    if ho < 1 or wo < 1:
        raise ValueError("empty output")
    ctype = np.result_type(x.dtype, np.complex64)
    import scipy.fft as sfft    # lazily: only the FFT path needs it (start-up time)
    P, Q = sfft.next_fast_len(P, real=True), sfft.next_fast_len(Q, real=True)  # 226 = 2*113 is slow
    Qr = Q // 2 + 1
    X = np.ascontiguousarray(sfft.rfft2(xp, s=(P, Q), workers=-1), dtype=ctype)  # (N,C,P,Qr)
    eh = np.exp(2j * np.pi * np.outer(np.arange(P), np.arange(k)) / P).astype(ctype)
    ev = np.exp(2j * np.pi * np.outer(np.arange(Qr), np.arange(k)) / Q).astype(ctype)
    if mode == "auto":
        mode = "taps" if k <= 3 else "spectrum"
    if mode == "taps":
        rtype = X.real.dtype
        wm = w.reshape(cin, k * k * cout).T.astype(rtype, copy=False)   # (K*K*Cout, Cin)
        Z = np.matmul(wm, X.view(rtype).reshape(n, cin, P * 2 * Qr))   # real GEMM on (re, im) pairs
        Z = Z.view(ctype).reshape(n, k, k, cout, P, Qr)
        Y = np.zeros((n, cout, P, Qr), dtype=ctype)
        for kh in range(k):
            row = Z[:, kh, 0].copy()
            for kw in range(1, k):
                row += Z[:, kh, kw] * ev[:, kw]
            Y += row * eh[:, kh, None] if kh else row
    elif mode == "spectrum":
        Xt = np.ascontiguousarray(X.transpose(2, 3, 0, 1)).reshape(P * Qr, n, c)
        T1 = np.einsum("vl,cklo->kvco", ev, w.astype(ctype)).reshape(k, -1)   # (K, Qr*Cin*Cout)
        Y = np.empty((P * Qr, n, cout), dtype=ctype)
        rows = max(1, mem_bytes // (Qr * cin * cout * np.dtype(ctype).itemsize))
        for u0 in range(0, P, rows):
            u1 = min(P, u0 + rows)
            Wc = (eh[u0:u1] @ T1).reshape((u1 - u0) * Qr, cin, cout)   # conj(Wf) for these rows
            np.matmul(Xt[u0 * Qr:u1 * Qr], Wc, out=Y[u0 * Qr:u1 * Qr])
        Y = Y.reshape(P, Qr, n, cout).transpose(2, 3, 0, 1)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    y = sfft.irfft2(Y, s=(P, Q), workers=-1)[:, :, :ho, :wo]
    return _add_bias(np.ascontiguousarray(y, dtype=x.dtype), b)


def conv2d_input_grad_fft(dy, w, pad, stride, x_shape, mode="auto"):
    """dx = conv2d_fft(dy, rotate_filter(w), pad=K-1-pad) (stride 1; cropped if pad > K-1)."""
    return _input_grad_via_forward(conv2d_fft, dy, w, pad, stride, x_shape, mode=mode)
