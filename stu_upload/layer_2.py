"""Exp 3.1 / 3.3, part 2: convolution, max-pooling and flatten layers.

Layouts (the original kit's): activations NCHW; convolution weight ``[Cin, K, K, Cout]``,
bias ``[Cout]``. Output size (handout eq. 3.4, floor rule)::

    H_out = (H + 2p - K) // s + 1        W_out = (W + 2p - K) // s + 1

Two ways to compute the same thing:

* ``type=0``: plain loops over (n, c_out, h, w): eqs. 3.3, 3.5, 3.6 (slow, obviously right);
* ``type=1``: img2col + one matrix multiply (fast; BLAS does the work).

The maths lives in small pure functions (``conv_output_size``, ``pad_nchw``, ``window_view``,
``img2col``, ``col2im``, ``maxpool_forward``, ``maxpool_backward``) tested on their own.
Every layer keeps the floating dtype it is given; integer input (a uint8 image) is converted
to float64. Constructor sizes must be whole numbers (positive; padding >= 0); every backward
checks that ``top_diff`` has the shape of forward's output.
"""
import time

import numpy as np

from stu_upload._base import as_float, check_param_shape, check_top_diff, need, whole_positive


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
    # === STUDENT BEGIN: window_view ===
    # hint: a view, not a copy (NumPy's stride tricks): axes (N, C, H_out, W_out, K, K),
    # hint: window (h, w) starts at (h*s, w*s) (eq. 3.3)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel_size, kernel_size),
                                                       axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]
    # === STUDENT END ===
    return windows


def img2col(x_pad, kernel_size, stride):
    """Padded input (N, Cin, Hp, Wp) -> matrix (N*H_out*W_out, Cin*K*K).

    Row ``(n, h, w)`` holds the window under output pixel (h, w), in (cin, kh, kw) order,
    the order of the weight ``[Cin, K, K, Cout]`` reshaped to ``(Cin*K*K, Cout)``.
    """
    n, cin = x_pad.shape[:2]
    # === STUDENT BEGIN: img2col ===
    # hint: window_view gives every K x K window without a copy; row (n, h, w) of the
    # hint: result is the window under output pixel (h, w), ordered (cin, kh, kw)
    windows = window_view(x_pad, kernel_size, stride)
    h_out, w_out = windows.shape[2:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h_out * w_out,
                                                       cin * kernel_size * kernel_size)
    # === STUDENT END ===
    return cols


def col2im(dcols, x_pad_shape, kernel_size, stride):
    """Adjoint of ``img2col``: (N*H_out*W_out, Cin*K*K) -> (N, Cin, Hp, Wp).

    Each window's gradient goes back where the window was read from. Loops only over the
    K*K kernel offsets (never over pixels or channels).
    """
    n, cin, hp, wp = x_pad_shape
    h_out = (hp - kernel_size) // stride + 1
    w_out = (wp - kernel_size) // stride + 1
    # (N, Ho, Wo, Cin, K, K) -> (N, Cin, K, K, Ho, Wo), one copy: each offset's slab is contiguous
    d = np.ascontiguousarray(dcols.reshape(n, h_out, w_out, cin, kernel_size, kernel_size)
                             .transpose(0, 3, 4, 5, 1, 2))
    dx_pad = np.zeros(x_pad_shape, dtype=dcols.dtype)
    # === STUDENT BEGIN: col2im ===
    # hint: the adjoint of img2col: each window element's gradient d[n, cin, kh, kw, h, w]
    # hint: belongs to the padded-input pixel it was read from (eq. 3.5, the gradient of
    # hint: X_pad); loop over the K*K kernel offsets only
    for kh in range(kernel_size):
        for kw in range(kernel_size):
            dx_pad[:, :, kh:kh + stride * h_out:stride, kw:kw + stride * w_out:stride] += \
                d[:, :, kh, kw]
    # === STUDENT END ===
    return dx_pad


# ----------------------------------------------------------------------------- convolution
class ConvolutionalLayer:
    """2-D convolution. input (N, Cin, H, W) -> output (N, Cout, H_out, W_out), eq. 3.4.

    ``type=0`` binds forward/backward to the loop versions (``forward_raw``,
    ``backward_raw``), ``type=1`` to img2col (``forward_speedup``, ``backward_speedup``).
    Parameters: weight [Cin, K, K, Cout], bias [Cout]. Cache between forward and backward:
    ``self.input`` (N, Cin, H, W) and, for img2col, ``self.cols`` (N*H_out*W_out, Cin*K*K).
    Set ``self.need_param_grad = False`` when only the input gradient is needed (style
    transfer): backward then skips d_weight and d_bias.
    """

    def __init__(self, kernel_size, channel_in, channel_out, padding, stride, type=0):
        who = "ConvolutionalLayer"
        self.kernel_size = whole_positive(who, "kernel_size", kernel_size)
        self.channel_in = whole_positive(who, "channel_in", channel_in)
        self.channel_out = whole_positive(who, "channel_out", channel_out)
        self.padding = whole_positive(who, "padding", padding, minimum=0)
        self.stride = whole_positive(who, "stride", stride)
        self.type = type
        self.need_param_grad = True
        self.input = None
        self.cols = None
        self.weight = None
        self.bias = None
        self.forward_time = self.backward_time = 0.0
        if type == 0:
            self.forward, self.backward = self.forward_raw, self.backward_raw
        elif type == 1:
            self.forward, self.backward = self.forward_speedup, self.backward_speedup
        else:
            raise ValueError(f"ConvolutionalLayer: type must be 0 (loops) or 1 (img2col), "
                             f"got {type!r}.")

    def init_param(self, std=0.01, seed=0):
        """Normal(0, std) weight [Cin, K, K, Cout]; zero bias [Cout]."""
        rng = np.random.default_rng(seed)
        k = self.kernel_size
        self.weight = rng.standard_normal((self.channel_in, k, k, self.channel_out))
        self.weight *= std          # rng.normal(0, std, size)'s values, in half the time
        self.bias = np.zeros(self.channel_out)

    def load_param(self, weight, bias):
        """weight [Cin, K, K, Cout]; bias [Cout] (a [1, Cout] or [Cout, 1] bias is flattened)."""
        k = self.kernel_size
        check_param_shape(self, "weight", np.shape(weight),
                          (self.channel_in, k, k, self.channel_out))
        bias = np.asarray(bias).reshape(-1)
        check_param_shape(self, "bias", bias.shape, (self.channel_out,))
        self.weight = np.ascontiguousarray(weight)
        self.bias = bias

    def _params(self, dtype):
        """(weight, bias) in the input's dtype (no copy when they already are)."""
        if self.weight is None:
            raise RuntimeError(f"{type(self).__name__}: no parameters yet; call init_param() "
                               f"or load_param(weight, bias) before forward().")
        return self.weight.astype(dtype, copy=False), self.bias.astype(dtype, copy=False)

    def _check_input(self, x):
        """(H_out, W_out) of a valid input (N, Cin, H, W); ValueError otherwise."""
        if x.ndim != 4 or x.shape[1] != self.channel_in:
            raise ValueError(f"ConvolutionalLayer: input has shape {x.shape}, expected "
                             f"(N, {self.channel_in}, H, W) in NCHW order.")
        return (conv_output_size(x.shape[2], self.kernel_size, self.padding, self.stride),
                conv_output_size(x.shape[3], self.kernel_size, self.padding, self.stride))

    def _output_shape(self, x):
        """(N, Cout, H_out, W_out) for the input x: the shape top_diff must have."""
        return (x.shape[0], self.channel_out) + self._check_input(x)

    # -- type 0: loops --------------------------------------------------------------------
    def forward_raw(self, input):
        """Eq. 3.3 with four loops over (n, c_out, h, w). Integer input becomes float64."""
        start = time.time()
        input = as_float(input, "ConvolutionalLayer.forward: input")
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
                        # hint: eq. 3.3: output pixel (n, c, h, w) is the K x K window of the
                        # hint: padded input at (h*s, w*s), all Cin channels, weighted by filter
                        # hint: c and summed, plus bias c
                        window = x_pad[n, :, h * s:h * s + k, w * s:w * s + k]
                        output[n, c, h, w] = np.sum(window * weight[:, :, :, c]) + bias[c]
                        # === STUDENT END ===
        self.forward_time = time.time() - start
        return output

    def backward_raw(self, top_diff):
        """Eqs. 3.5-3.6 with four loops: each output pixel sends its gradient back."""
        start = time.time()
        x = need(self, "input")
        top_diff = check_top_diff(self, top_diff, self._output_shape(x))
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
                        # hint: eq. 3.5: output pixel (n, c, h, w) used one K x K window of the
                        # hint: padded input and filter c; its gradient flows back to both
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
        """img2col then one matrix multiply: (N*Ho*Wo, Cin*K*K) @ (Cin*K*K, Cout).
        Integer input becomes float64."""
        start = time.time()
        input = as_float(input, "ConvolutionalLayer.forward: input")
        h_out, w_out = self._check_input(input)
        weight, bias = self._params(input.dtype)
        self.input = input
        n = input.shape[0]
        # === STUDENT BEGIN: conv_forward_img2col ===
        # hint: self.cols = the img2col matrix of the padded input; the weight seen as a
        # hint: (Cin*K*K, Cout) matrix; one product gives (N*H_out*W_out, Cout) rows in
        # hint: (n, h, w) order, to be brought back to NCHW
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
        top_diff = check_top_diff(self, top_diff, self._output_shape(x))
        weight, _ = self._params(top_diff.dtype)
        p = self.padding
        x_pad_shape = (x.shape[0], x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p)
        # === STUDENT BEGIN: conv_backward_img2col ===
        # hint: eqs. 3.5-3.6 as matrix products: top_diff seen as (N*H_out*W_out, Cout);
        # hint: d_weight from cols and it, d_bias its column sums; the gradient of cols goes
        # hint: back through col2im, then the padding is dropped (eq. 3.6)
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

    def get_gradient(self):
        return self.d_weight, self.d_bias

    def update_param(self, lr):
        self.weight = self.weight - lr * self.d_weight
        self.bias = self.bias - lr * self.d_bias

    def get_forward_time(self):
        return self.forward_time

    def get_backward_time(self):
        return self.backward_time


# ----------------------------------------------------------------------------- pooling
class MaxPoolingLayer:
    """Max-pooling. input (N, C, H, W) -> output (N, C, H_out, W_out), H_out = (H-K)//s + 1.

    Windows may overlap (s < K); rows/columns the floor rule leaves out get zero gradient.
    ``type=0``: loops (``forward_raw``, ``backward_raw_book``) caching ``self.argmax``
    (N, C, H_out, W_out), the index kh*K + kw of each window's maximum (the first one on
    ties), eq. 3.8. ``type=1``: vectorised (``forward_speedup``, ``backward_speedup``, via
    ``maxpool_forward``/``maxpool_backward``) caching ``self.output``.
    """

    def __init__(self, kernel_size, stride, type=0):
        self.kernel_size = whole_positive("MaxPoolingLayer", "kernel_size", kernel_size)
        self.stride = whole_positive("MaxPoolingLayer", "stride", stride)
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
        input = as_float(input, "MaxPoolingLayer.forward: input")
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
                        # hint: eq. 3.7: the maximum of the K x K window at (h*s, w*s);
                        # hint: eq. 3.8: remember where in the window it was (kh*K + kw)
                        window = input[n, c, h * s:h * s + k, w * s:w * s + k]
                        self.argmax[n, c, h, w] = np.argmax(window)
                        output[n, c, h, w] = np.max(window)
                        # === STUDENT END ===
        return output

    def backward_raw_book(self, top_diff):
        """Eq. 3.9 with loops: each output's gradient goes to its window's maximum."""
        x = need(self, "input")
        argmax = need(self, "argmax")
        top_diff = check_top_diff(self, top_diff, argmax.shape)
        k, s = self.kernel_size, self.stride
        bottom_diff = np.zeros(x.shape, dtype=top_diff.dtype)
        for n in range(top_diff.shape[0]):
            for c in range(top_diff.shape[1]):
                for h in range(top_diff.shape[2]):
                    for w in range(top_diff.shape[3]):
                        # === STUDENT BEGIN: pool_backward_raw ===
                        # hint: eq. 3.9: the gradient of output (n, c, h, w) goes to the input
                        # hint: element that was the window's maximum (self.argmax); windows
                        # hint: may overlap
                        qh, qw = divmod(int(argmax[n, c, h, w]), k)
                        bottom_diff[n, c, h * s + qh, w * s + qw] += top_diff[n, c, h, w]
                        # === STUDENT END ===
        return bottom_diff

    def forward_speedup(self, input):
        """Vectorised eq. 3.7 (``maxpool_forward``); caches ``self.output`` for backward."""
        start = time.time()
        input = as_float(input, "MaxPoolingLayer.forward: input")
        self._out_size(input)
        self.input = input
        self.output = maxpool_forward(input, self.kernel_size, self.stride)
        self.forward_time = time.time() - start
        return self.output

    def backward_speedup(self, top_diff):
        """Vectorised eq. 3.9 (``maxpool_backward``)."""
        start = time.time()
        x = need(self, "input")
        output = need(self, "output")
        top_diff = check_top_diff(self, top_diff, output.shape)
        bottom_diff = maxpool_backward(x, output, top_diff, self.kernel_size, self.stride)
        self.backward_time = time.time() - start
        return bottom_diff


def offset_views(array, kernel_size, stride, h_out, w_out):
    """The K*K strided views array[:, :, kh::s, kw::s] cropped to (H_out, W_out): view
    (kh, kw) holds, for every window, its element at offset (kh, kw)."""
    k, s = kernel_size, stride
    return [array[:, :, kh:kh + s * (h_out - 1) + 1:s, kw:kw + s * (w_out - 1) + 1:s]
            for kh in range(k) for kw in range(k)]


def maxpool_forward(x, kernel_size, stride):
    """Eq. 3.7 without loops over pixels or channels: (N, C, H, W) -> (N, C, H_out, W_out),
    H_out = (H - K) // s + 1. May loop over the K*K kernel offsets (``offset_views``)."""
    h_out = (x.shape[2] - kernel_size) // stride + 1
    w_out = (x.shape[3] - kernel_size) // stride + 1
    # === STUDENT BEGIN: pool_forward_speedup ===
    # hint: offset view (kh, kw) holds element (kh, kw) of every window at once; the
    # hint: output is their element-wise maximum
    views = offset_views(x, kernel_size, stride, h_out, w_out)
    out = views[0].copy()
    for view in views[1:]:
        np.maximum(out, view, out=out)
    # === STUDENT END ===
    return out


def maxpool_backward(x, output, top_diff, kernel_size, stride):
    """Eq. 3.9 without loops over pixels or channels. x (N, C, H, W); output and top_diff
    (N, C, H_out, W_out) -> bottom_diff like x. Each window's gradient goes to the first
    offset (row-major) that holds its maximum (eq. 3.8's p), as in the loop version."""
    k, s = kernel_size, stride
    h_out, w_out = output.shape[2:]
    bottom_diff = np.zeros(x.shape, dtype=top_diff.dtype)
    # === STUDENT BEGIN: pool_backward_speedup ===
    # hint: eq. 3.9 for all windows at once: each window's top_diff goes to the first
    # hint: position (row-major) that holds its maximum; offset view (kh, kw) of x and of
    # hint: bottom_diff address element (kh, kw) of every window
    taken = np.zeros(output.shape, dtype=bool)
    for view, target in zip(offset_views(x, k, s, h_out, w_out),
                            offset_views(bottom_diff, k, s, h_out, w_out)):
        hit = (view == output) & ~taken
        taken |= hit
        target += top_diff * hit
    # === STUDENT END ===
    return bottom_diff


# ----------------------------------------------------------------------------- flatten
class FlattenLayer:
    """(N, C, H, W) -> (N, H*W*C) in MatConvNet's H, W, C order (fc6's weight order).

    ``FlattenLayer([C, H, W], [H*W*C])``; backward undoes the reshape and the transpose.
    """

    def __init__(self, input_shape, output_shape):
        self.input_shape = tuple(whole_positive("FlattenLayer", "input_shape", v)
                                 for v in input_shape)
        self.output_shape = tuple(whole_positive("FlattenLayer", "output_shape", v)
                                  for v in output_shape)
        if int(np.prod(self.input_shape)) != int(np.prod(self.output_shape)):
            raise ValueError(f"FlattenLayer: input shape {self.input_shape} and output shape "
                             f"{self.output_shape} hold different numbers of values.")
        self.batch = None

    def forward(self, input):
        input = as_float(input, "FlattenLayer.forward: input")
        if input.shape[1:] != self.input_shape:
            raise ValueError(f"FlattenLayer: input has shape {input.shape}, expected "
                             f"(N,) + {self.input_shape}.")
        self.batch = input.shape[0]
        # MatConvNet stores fc6 as [H, W, C, out]: flatten in H, W, C order
        return input.transpose(0, 2, 3, 1).reshape((self.batch,) + self.output_shape)

    def backward(self, top_diff):
        batch = need(self, "batch")
        top_diff = check_top_diff(self, top_diff, (batch,) + self.output_shape)
        c, h, w = self.input_shape
        return top_diff.reshape(batch, h, w, c).transpose(0, 3, 1, 2)
