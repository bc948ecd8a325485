"""Exp 3.1 / 3.3, part 2: convolution, max-pooling and flatten layers.

Layouts (the original kit's): activations NCHW; convolution weight ``[Cin, K, K, Cout]``,
bias ``[Cout]``. Output size (handout eq. 3.4, floor rule)::

    H_out = (H + 2p - K) // s + 1        W_out = (W + 2p - K) // s + 1

Two ways to compute the same thing:

* ``type=0``: plain loops over (n, c_out, h, w): eqs. 3.3, 3.5, 3.6 (slow, obviously right);
* ``type=1``: img2col + one matrix multiply (fast; BLAS does the work).

The maths lives in small pure functions (``conv_output_size``, ``pad_nchw``, ``window_view``,
``img2col``, ``col2im``) tested on their own. Every layer keeps the dtype it is given.
"""
import time

import numpy as np

from labkit.perf import by_channels
from stu_upload._base import check_param_shape, need


# ----------------------------------------------------------------------------- pure maths
def conv_output_size(size, kernel_size, padding, stride):
    """Eq. 3.4: ``(size + 2*padding - kernel_size) // stride + 1``; error if not positive."""
    out = (size + 2 * padding - kernel_size) // stride + 1
    if out < 1:
        raise ValueError(
            f"input size {size} with padding {padding} is smaller than the kernel "
            f"({kernel_size}): the output would be empty. Use a larger input or more padding.")
    return out


def pad_nchw(x, padding):
    """Zero-pad the two spatial axes of an (N, C, H, W) array by ``padding`` on each side."""
    if padding == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def window_view(x, kernel_size, stride):
    """Read-only view (N, C, H_out, W_out, K, K) of the K x K windows of x (N, C, H, W).

    No copy: ``view[n, c, h, w] is x[n, c, h*s:h*s+K, w*s:w*s+K]``.
    """
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel_size, kernel_size),
                                                       axis=(2, 3))
    return windows[:, :, ::stride, ::stride]


def img2col(x_pad, kernel_size, stride):
    """Padded input (N, Cin, Hp, Wp) -> matrix (N*H_out*W_out, Cin*K*K).

    Row ``(n, h, w)`` holds the window under output pixel (h, w), in (cin, kh, kw) order,
    the order of the weight ``[Cin, K, K, Cout]`` reshaped to ``(Cin*K*K, Cout)``.
    """
    n, cin = x_pad.shape[:2]
    # === STUDENT BEGIN: img2col ===
    # hint: take the K x K windows with window_view, move the channel axis next to the
    # hint: kernel axes, i.e. (N, H_out, W_out, Cin, K, K), then reshape to 2-D
    windows = window_view(x_pad, kernel_size, stride)
    h_out, w_out = windows.shape[2:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h_out * w_out,
                                                       cin * kernel_size * kernel_size)
    # === STUDENT END ===
    return cols


def col2im(dcols, x_pad_shape, kernel_size, stride):
    """Adjoint of ``img2col``: (N*H_out*W_out, Cin*K*K) -> (N, Cin, Hp, Wp).

    Each window's gradient is added back where the window came from; overlapping windows
    add up. Loops only over the K*K kernel offsets (never over pixels or channels).
    """
    n, cin, hp, wp = x_pad_shape
    h_out = (hp - kernel_size) // stride + 1
    w_out = (wp - kernel_size) // stride + 1
    # (N, Ho, Wo, Cin, K, K) -> (N, Cin, K, K, Ho, Wo), one copy: each offset's slab is contiguous
    d = np.ascontiguousarray(dcols.reshape(n, h_out, w_out, cin, kernel_size, kernel_size)
                             .transpose(0, 3, 4, 5, 1, 2))
    dx_pad = np.zeros(x_pad_shape, dtype=dcols.dtype)
    # === STUDENT BEGIN: col2im ===
    # hint: for each kernel offset (kh, kw) the windows touch the strided slice
    # hint: dx_pad[:, :, kh : kh + s*H_out : s, kw : kw + s*W_out : s]; add d[:, :, kh, kw] there
    for kh in range(kernel_size):
        for kw in range(kernel_size):
            dx_pad[:, :, kh:kh + stride * h_out:stride, kw:kw + stride * w_out:stride] += \
                d[:, :, kh, kw]
    # === STUDENT END ===
    return dx_pad


# ----------------------------------------------------------------------------- convolution
class ConvolutionalLayer:
    """2-D convolution. input (N, Cin, H, W) -> output (N, Cout, H_out, W_out), eq. 3.4.

    ``type=0`` binds forward/backward to the loop versions, ``type=1`` to img2col.
    ``type=1`` with ``method`` None runs the lab's img2col below; "img2col", "winograd",
    "winograd4", "fft" or "auto" use the tuned engine of ``labkit.conv_engine`` instead
    (beyond the lab: the handout's other fast algorithms; "auto" picks the fastest per
    shape). After changing ``weight`` in place, call ``params_changed()``.
    Cache between forward and backward: ``self.input`` (N, Cin, H, W) and, for img2col,
    ``self.cols`` (N*H_out*W_out, Cin*K*K). Set ``self.need_param_grad = False`` when only
    the input gradient is needed (style transfer): backward then skips d_weight and d_bias.
    """

    def __init__(self, kernel_size, channel_in, channel_out, padding, stride, type=0,
                 method=None):
        self.kernel_size = int(kernel_size)
        self.channel_in = int(channel_in)
        self.channel_out = int(channel_out)
        self.padding = int(padding)
        self.stride = int(stride)
        if min(self.kernel_size, self.channel_in, self.channel_out, self.stride) < 1 \
                or self.padding < 0:
            raise ValueError("ConvolutionalLayer: kernel_size, channel_in, channel_out and "
                             "stride must be >= 1 and padding >= 0.")
        self.type = type
        self.need_param_grad = True
        self.input = None
        self.input_meta = None      # (shape, dtype) of the last input, for the engine path
        self.cols = None
        self.weight = None
        self.bias = None
        self.forward_time = self.backward_time = 0.0
        self.method = method
        self._cast = {}             # dtype -> (weight, bias) in that dtype
        self._engine = None
        if type == 0:
            self.forward, self.backward = self.forward_raw, self.backward_raw
        elif type == 1 and method is None:
            self.forward, self.backward = self.forward_speedup, self.backward_speedup
        elif type == 1:
            from labkit.conv_engine import METHODS
            if method not in METHODS:
                raise ValueError(f"ConvolutionalLayer: method must be None (the lab's "
                                 f"img2col) or one of {METHODS}, got {method!r}.")
            self.forward, self.backward = self.forward_engine, self.backward_engine
        else:
            raise ValueError(f"ConvolutionalLayer: type must be 0 (loops) or 1 (img2col), "
                             f"got {type!r}.")

    def init_param(self, std=0.01, seed=0):
        """Normal(0, std) weight [Cin, K, K, Cout]; zero bias [Cout]."""
        rng = np.random.default_rng(seed)
        k = self.kernel_size
        self.weight = rng.normal(0.0, std, size=(self.channel_in, k, k, self.channel_out))
        self.bias = np.zeros(self.channel_out)
        self.params_changed()

    def load_param(self, weight, bias):
        """weight [Cin, K, K, Cout]; bias [Cout] (a [1, Cout] or [Cout, 1] bias is flattened)."""
        k = self.kernel_size
        check_param_shape(self, "weight", np.shape(weight),
                          (self.channel_in, k, k, self.channel_out))
        bias = np.asarray(bias).reshape(-1)
        check_param_shape(self, "bias", bias.shape, (self.channel_out,))
        self.weight = np.ascontiguousarray(weight)
        self.bias = bias
        self.params_changed()

    def _params(self, dtype):
        """(weight, bias) in ``dtype``, converted once per dtype and kept."""
        if self.weight is None:
            raise RuntimeError(f"{type(self).__name__}: no parameters yet; call init_param() "
                               f"or load_param(weight, bias) before forward().")
        if dtype not in self._cast:
            self._cast[dtype] = (self.weight.astype(dtype, copy=False),
                                 self.bias.astype(dtype, copy=False))
        return self._cast[dtype]

    def _check_input(self, x):
        if x.ndim != 4 or x.shape[1] != self.channel_in:
            raise ValueError(f"ConvolutionalLayer: input has shape {x.shape}, expected "
                             f"(N, {self.channel_in}, H, W) in NCHW order.")
        return (conv_output_size(x.shape[2], self.kernel_size, self.padding, self.stride),
                conv_output_size(x.shape[3], self.kernel_size, self.padding, self.stride))

    # -- type 0: loops --------------------------------------------------------------------
    def forward_raw(self, input):
        """Eq. 3.3 with four loops over (n, c_out, h, w)."""
        start = time.time()
        h_out, w_out = self._check_input(input)
        weight, bias = self._params(input.dtype)
        self.input = input
        x_pad = pad_nchw(input, self.padding)
        k, s = self.kernel_size, self.stride
        output = np.zeros((input.shape[0], self.channel_out, h_out, w_out), dtype=input.dtype)
        for n in range(input.shape[0]):
            for c in range(self.channel_out):
                for h in range(h_out):
                    for w in range(w_out):
                        # === STUDENT BEGIN: conv_forward_raw ===
                        # hint: eq. 3.3: sum of W[:, :, :, c] times the window at (h*s, w*s),
                        # hint: plus the bias of channel c
                        window = x_pad[n, :, h * s:h * s + k, w * s:w * s + k]
                        output[n, c, h, w] = np.sum(window * weight[:, :, :, c]) + bias[c]
                        # === STUDENT END ===
        self.forward_time = time.time() - start
        return output

    def backward_raw(self, top_diff):
        """Eqs. 3.5-3.6 with four loops: each output pixel sends its gradient back."""
        start = time.time()
        x = need(self, "input")
        weight, _ = self._params(top_diff.dtype)
        x_pad = pad_nchw(x, self.padding)
        k, s, p = self.kernel_size, self.stride, self.padding
        d_weight = np.zeros_like(weight)
        dx_pad = np.zeros_like(x_pad)
        for n in range(top_diff.shape[0]):
            for c in range(top_diff.shape[1]):
                for h in range(top_diff.shape[2]):
                    for w in range(top_diff.shape[3]):
                        # === STUDENT BEGIN: conv_backward_raw ===
                        # hint: eq. 3.5: the window at (h*s, w*s) gets top_diff * W[..., c];
                        # hint: W[..., c] gets top_diff * window
                        g = top_diff[n, c, h, w]
                        d_weight[:, :, :, c] += g * x_pad[n, :, h * s:h * s + k, w * s:w * s + k]
                        dx_pad[n, :, h * s:h * s + k, w * s:w * s + k] += g * weight[:, :, :, c]
                        # === STUDENT END ===
        self.d_weight = d_weight
        self.d_bias = top_diff.sum(axis=(0, 2, 3))
        # eq. 3.6: drop the padding
        bottom_diff = dx_pad[:, :, p:p + x.shape[2], p:p + x.shape[3]]
        self.backward_time = time.time() - start
        return bottom_diff

    # -- type 1: img2col + GEMM -----------------------------------------------------------
    def forward_speedup(self, input):
        """img2col then one matrix multiply: (N*Ho*Wo, Cin*K*K) @ (Cin*K*K, Cout)."""
        start = time.time()
        h_out, w_out = self._check_input(input)
        weight, bias = self._params(input.dtype)
        self.input = input
        n = input.shape[0]
        # === STUDENT BEGIN: conv_forward_img2col ===
        # hint: cols = img2col(padded input); weight as a (Cin*K*K, Cout) matrix;
        # hint: output rows are (n, h, w) -> reshape to (N, Ho, Wo, Cout), then NCHW
        self.cols = img2col(pad_nchw(input, self.padding), self.kernel_size, self.stride)
        out = self.cols @ weight.reshape(-1, self.channel_out) + bias
        output = out.reshape(n, h_out, w_out, self.channel_out).transpose(0, 3, 1, 2)
        # === STUDENT END ===
        self.forward_time = time.time() - start
        return np.ascontiguousarray(output)

    def backward_speedup(self, top_diff):
        """Gradients with matrix multiplies and col2im (see ``col2im``)."""
        start = time.time()
        x = need(self, "input")
        cols = need(self, "cols")
        weight, _ = self._params(top_diff.dtype)
        p = self.padding
        x_pad_shape = (x.shape[0], x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p)
        # === STUDENT BEGIN: conv_backward_img2col ===
        # hint: dY as a (N*Ho*Wo, Cout) matrix; dW = cols^T dY; db = column sums of dY;
        # hint: dcols = dY W^T, then col2im, then drop the padding (eq. 3.6)
        dy = top_diff.transpose(0, 2, 3, 1).reshape(-1, self.channel_out)
        if self.need_param_grad:
            self.d_weight = (cols.T @ dy).reshape(weight.shape)
            self.d_bias = dy.sum(axis=0)
        dcols = dy @ weight.reshape(-1, self.channel_out).T
        dx_pad = col2im(dcols, x_pad_shape, self.kernel_size, self.stride)
        bottom_diff = dx_pad[:, :, p:p + x.shape[2], p:p + x.shape[3]]
        # === STUDENT END ===
        self.backward_time = time.time() - start
        return np.ascontiguousarray(bottom_diff)

    # -- type 1 with a tuned method: labkit.conv_engine ----------------------------------
    def forward_engine(self, input):
        """Same result as forward_speedup, by the engine's method for this shape."""
        start = time.time()
        self._check_input(input)
        weight, bias = self._params(input.dtype)
        if self._engine is None or self._engine.weight is not weight:
            from labkit.conv_engine import ConvEngine
            self._engine = ConvEngine(weight, bias, self.padding, self.stride, self.method)
        # the input itself is needed only for the parameter gradients; otherwise keep its
        # shape and dtype, so that large activations are freed as soon as possible
        self.input = input if self.need_param_grad else None
        self.input_meta = (input.shape, input.dtype)
        output = self._engine.forward(input)
        self.forward_time = time.time() - start
        return output

    def backward_engine(self, top_diff):
        """Input gradient as a convolution of top_diff (stride 1); parameter gradients
        only when ``need_param_grad`` (then forward kept the input)."""
        start = time.time()
        shape, dtype = need(self, "input_meta")
        if top_diff.dtype != dtype:
            top_diff = top_diff.astype(dtype)
        bottom_diff = self._engine.input_grad(top_diff, shape)
        if self.need_param_grad:
            self.d_weight, self.d_bias = self._engine.param_grad(need(self, "input"), top_diff)
        self.backward_time = time.time() - start
        return bottom_diff

    def params_changed(self):
        """Forget converted weights and filter transforms (after an in-place change)."""
        self._cast, self._engine = {}, None

    def get_gradient(self):
        return self.d_weight, self.d_bias

    def update_param(self, lr):
        self.weight = self.weight - lr * self.d_weight
        self.bias = self.bias - lr * self.d_bias
        self.params_changed()

    def get_forward_time(self):
        return self.forward_time

    def get_backward_time(self):
        return self.backward_time


# ----------------------------------------------------------------------------- pooling
class MaxPoolingLayer:
    """Max-pooling. input (N, C, H, W) -> output (N, C, H_out, W_out), H_out = (H-K)//s + 1.

    Windows may overlap (s < K); rows/columns the floor rule leaves out get zero gradient.
    Cache: ``self.input``, and ``self.argmax`` (N, C, H_out, W_out) for the loops: the index
    kh*K + kw of each window's maximum (the first one on ties), eq. 3.8; the vectorised
    path caches ``self.output`` instead and finds the maxima again in backward.
    """

    def __init__(self, kernel_size, stride, type=0):
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.type = type
        self.input = None
        self.argmax = None
        self.output = None
        self.forward_time = self.backward_time = 0.0
        if type == 0:
            self.forward, self.backward = self.forward_raw, self.backward_raw_book
        elif type == 1:
            self.forward, self.backward = self.forward_speedup, self.backward_speedup
        else:
            raise ValueError(f"MaxPoolingLayer: type must be 0 or 1, got {type!r}.")

    def _out_size(self, x):
        if x.ndim != 4:
            raise ValueError(f"MaxPoolingLayer: input has shape {x.shape}, expected NCHW.")
        return (conv_output_size(x.shape[2], self.kernel_size, 0, self.stride),
                conv_output_size(x.shape[3], self.kernel_size, 0, self.stride))

    def forward_raw(self, input):
        """Eq. 3.7 with loops; records the position of each maximum (eq. 3.8)."""
        h_out, w_out = self._out_size(input)
        k, s = self.kernel_size, self.stride
        self.input = input
        output = np.zeros(input.shape[:2] + (h_out, w_out), dtype=input.dtype)
        self.argmax = np.zeros(output.shape, dtype=np.int64)
        for n in range(input.shape[0]):
            for c in range(input.shape[1]):
                for h in range(h_out):
                    for w in range(w_out):
                        # === STUDENT BEGIN: pool_forward_raw ===
                        # hint: the window is input[n, c, h*s:h*s+K, w*s:w*s+K]; keep its max
                        # hint: and the flat index of the max (np.argmax) in self.argmax
                        window = input[n, c, h * s:h * s + k, w * s:w * s + k]
                        self.argmax[n, c, h, w] = np.argmax(window)
                        output[n, c, h, w] = np.max(window)
                        # === STUDENT END ===
        return output

    def backward_raw_book(self, top_diff):
        """Eq. 3.9 with loops: each output's gradient goes to its window's maximum."""
        x = need(self, "input")
        argmax = need(self, "argmax")
        k, s = self.kernel_size, self.stride
        bottom_diff = np.zeros(x.shape, dtype=top_diff.dtype)
        for n in range(top_diff.shape[0]):
            for c in range(top_diff.shape[1]):
                for h in range(top_diff.shape[2]):
                    for w in range(top_diff.shape[3]):
                        # === STUDENT BEGIN: pool_backward_raw ===
                        # hint: q = divmod(argmax, K) is the max's row and column in the window
                        qh, qw = divmod(int(argmax[n, c, h, w]), k)
                        bottom_diff[n, c, h * s + qh, w * s + qw] += top_diff[n, c, h, w]
                        # === STUDENT END ===
        return bottom_diff

    def forward_speedup(self, input):
        """Vectorised (``maxpool_forward``): no loop over pixels or channels.
        Caches ``self.output`` for backward (not an argmax array: cheaper)."""
        start = time.time()
        h_out, w_out = self._out_size(input)
        self.input = input
        k, s = self.kernel_size, self.stride
        self.output = np.empty(input.shape[:2] + (h_out, w_out), dtype=input.dtype)
        # channels are independent: the tuned runs split them over threads (labkit.perf)
        by_channels(lambda c: maxpool_forward(input[:, c], k, s, out=self.output[:, c]),
                    input.shape[1])
        self.forward_time = time.time() - start
        return self.output

    def backward_speedup(self, top_diff):
        """Vectorised eq. 3.9 (``maxpool_backward``)."""
        start = time.time()
        x = need(self, "input")
        output = need(self, "output")
        k, s = self.kernel_size, self.stride
        bottom_diff = np.empty(x.shape, dtype=top_diff.dtype)
        by_channels(lambda c: maxpool_backward(x[:, c], output[:, c], top_diff[:, c], k, s,
                                               out=bottom_diff[:, c]), x.shape[1])
        self.backward_time = time.time() - start
        return bottom_diff


def offset_views(array, kernel_size, stride, h_out, w_out):
    """The K*K strided views array[:, :, kh::s, kw::s] cropped to (H_out, W_out): view
    (kh, kw) holds, for every window, its element at offset (kh, kw)."""
    k, s = kernel_size, stride
    return [array[:, :, kh:kh + s * (h_out - 1) + 1:s, kw:kw + s * (w_out - 1) + 1:s]
            for kh in range(k) for kw in range(k)]


def maxpool_forward(x, kernel_size, stride, out=None):
    """(N, C, H, W) -> (N, C, H_out, W_out), H_out = (H - K) // s + 1: the element-wise
    maximum of the K*K offset views (loops over the offsets only). Writes into ``out``
    if given."""
    h_out = (x.shape[2] - kernel_size) // stride + 1
    w_out = (x.shape[3] - kernel_size) // stride + 1
    views = offset_views(x, kernel_size, stride, h_out, w_out)
    if out is None:
        out = np.empty(views[0].shape, dtype=x.dtype)
    np.copyto(out, views[0])
    for view in views[1:]:
        np.maximum(out, view, out=out)
    return out


def maxpool_backward(x, output, top_diff, kernel_size, stride, out=None):
    """Eq. 3.9, vectorised: each window's gradient goes to the first offset (row-major)
    that holds its maximum, as in the loop version. x (N, C, H, W); output and top_diff
    (N, C, H_out, W_out) -> bottom_diff like x (written into ``out`` if given)."""
    k, s = kernel_size, stride
    h_out, w_out = output.shape[2:]
    if out is None:
        out = np.empty(x.shape, dtype=top_diff.dtype)
    if not (k == s and h_out * s == x.shape[2] and w_out * s == x.shape[3]):
        out.fill(0)      # overlaps add up, and the floor rule leaves elements with no window
    taken = np.zeros(output.shape, dtype=bool)
    for view, target in zip(offset_views(x, k, s, h_out, w_out),
                            offset_views(out, k, s, h_out, w_out)):
        hit = view == output
        hit &= ~taken
        taken |= hit
        if k == s:                          # disjoint windows: write
            np.multiply(top_diff, hit, out=target)
        else:                               # overlapping windows add up
            target += top_diff * hit
    return out


# ----------------------------------------------------------------------------- flatten
class FlattenLayer:
    """(N, C, H, W) -> (N, H*W*C) in MatConvNet's H, W, C order (fc6's weight order).

    ``FlattenLayer([C, H, W], [H*W*C])``; backward undoes the reshape and the transpose.
    """

    def __init__(self, input_shape, output_shape):
        self.input_shape = tuple(int(v) for v in input_shape)
        self.output_shape = tuple(int(v) for v in output_shape)
        if int(np.prod(self.input_shape)) != int(np.prod(self.output_shape)):
            raise ValueError(f"FlattenLayer: input shape {self.input_shape} and output shape "
                             f"{self.output_shape} hold different numbers of values.")
        self.batch = None

    def forward(self, input):
        if input.shape[1:] != self.input_shape:
            raise ValueError(f"FlattenLayer: input has shape {input.shape}, expected "
                             f"(N,) + {self.input_shape}.")
        self.batch = input.shape[0]
        # MatConvNet stores fc6 as [H, W, C, out]: flatten in H, W, C order
        return input.transpose(0, 2, 3, 1).reshape((self.batch,) + self.output_shape)

    def backward(self, top_diff):
        batch = need(self, "batch")
        c, h, w = self.input_shape
        return top_diff.reshape(batch, h, w, c).transpose(0, 3, 1, 2)
