"""The fast convolution behind the tuned engine's layers (not a student file).

One engine per layer. It keeps what does not change between calls: the rotated weight (for
input gradients, where a method needs it) and the Winograd filter transforms of both
directions. Inside ``labkit.engine.perf.engine_threads()`` the work is split over a pool of
threads. The engine's layout is channels-last: Winograd and img2col return (N, C, H, W)
views of (N, H, W, C) arrays, and Winograd takes such views without a copy (anything else
is copied once), so its tile gather and scatter move runs of C contiguous numbers. Methods
(``labkit.engine.conv_algos``):

=============  =====================================================================
img2col        shifted-slice img2col + one GEMM; input gradient of stride 1 is a
               convolution of dy with the rotated filter (no scatter); any K, stride
winograd       F(2x2,3x3): 2.25x fewer multiplies; 3x3, stride 1
winograd4      F(4x4,3x3): 4x fewer multiplies; 3x3, stride 1 (float32 error ~1e-6)
fft            FFT convolution; any K, stride 1
auto           the fastest for the shape, from ``choose_method`` (measured table)
=============  =====================================================================
"""
import numpy as np

from labkit.engine import conv_algos as algos
from labkit.engine.perf import active_pool, by_channels, run_split

METHODS = ("img2col", "winograd", "winograd4", "fft", "auto")


def choose_method(kernel_size, stride, channel_in, channel_out, height, width):
    """The default method for a convolution of this shape (N = 1, float32, 2 cores).

    Measured with ``benchmarks/bench_kit.py`` on VGG19's layers: Winograd F(4x4) wins from
    32 channels up on maps larger than 16x16 (ties with img2col at 64->128 on 112x112);
    on smaller maps F(2x2) (less transform work per output) is fastest; narrow layers
    (conv1_1's 3 input channels), other kernels and strides use img2col.
    """
    if kernel_size != 3 or stride != 1 or min(channel_in, channel_out) < 32:
        return "img2col"
    if height * width <= 16 * 16:
        return "winograd"
    return "winograd4"


def masked(dy, mask):
    """dy * (mask > 0): a ReLU's backward (mask = its output), by channel ranges (by row
    ranges when both are stored channels-last; the result keeps dy's layout)."""
    out = np.empty_like(dy)
    if algos.is_channels_last(dy) and algos.is_channels_last(mask):   # out: as dy
        d, m, o = (a.transpose(0, 2, 3, 1) for a in (dy, mask, out))
        run_split(active_pool(), lambda r0, r1: np.multiply(d[:, r0:r1], m[:, r0:r1] > 0,
                                                            out=o[:, r0:r1]), d.shape[1])
        return out
    by_channels(lambda ch: np.multiply(dy[:, ch], mask[:, ch] > 0, out=out[:, ch]), dy.shape[1])
    return out


def relu_inplace(y):
    """y = max(y, 0) in place, by channel ranges."""
    by_channels(lambda ch: np.maximum(y[:, ch], 0, out=y[:, ch]), y.shape[1])
    return y


class ConvEngine:
    """Fast forward / input gradient / parameter gradients of one convolution.

    weight [Cin, K, K, Cout], bias [Cout]; x (N, Cin, H, W) -> y (N, Cout, Ho, Wo).
    """

    def __init__(self, weight, bias, padding, stride, method="auto"):
        if method not in METHODS:
            raise ValueError(f"unknown convolution method {method!r}; choose one of {METHODS}")
        self.weight, self.bias = weight, bias
        self.cin, self.k, _, self.cout = weight.shape
        self.padding, self.stride = padding, stride
        self.method = method
        self._cache = {}

    def _method(self, x_shape, cin, cout):
        if self.method != "auto":
            if self.method != "img2col" and self.stride != 1:
                raise ValueError(f"method {self.method!r} needs stride 1 (this layer has "
                                 f"stride {self.stride}); use 'img2col' or 'auto'.")
            if self.method.startswith("winograd") and self.k != 3:
                raise ValueError(f"method {self.method!r} needs a 3x3 kernel; use 'img2col'.")
            return self.method
        return choose_method(self.k, self.stride, cin, cout, x_shape[2], x_shape[3])

    def _get(self, key, make):
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = make()
        return value

    def _conv(self, x, w_key, w, bias, pad, method, relu=False, mask=None):
        """x (N, C, H, W) convolved with w() [C, K, K, C'] (stride self.stride if img2col);
        ``w`` is a function, so that Winograd, whose transformed filter is cached, never
        keeps (or recomputes) the filter itself.
        ``relu``: return max(y, 0) (fused into the output stage); ``mask`` (like x):
        convolve x * (mask > 0) instead (fused into the padding copy where there is one).
        Winograd and img2col return an (N, C', H', W') view of a channels-last array (the
        engine's layout: the next layer's tile gather copies runs of C' numbers)."""
        dtype, pool = x.dtype, active_pool()
        if method in ("winograd", "winograd4"):
            m = 2 if method == "winograd" else 4
            U = self._get((w_key, method, dtype),
                          lambda: algos.winograd_filter_transform(w(), m, dtype,
                                                                  channels_last=True))
            y = algos.winograd_cl(algos.channels_last(x), U, bias, pad, m, pool, relu,
                                  None if mask is None else algos.channels_last(mask))
            return y.transpose(0, 3, 1, 2)
        if mask is not None:
            x = masked(x, mask)
        if method == "img2col":
            return algos.conv2d_img2col(x, w(), bias, pad, self.stride, pool, relu,
                                        channels_last_out=True)
        y = algos.conv2d_fft(x, w().astype(dtype, copy=False), bias, pad)
        return relu_inplace(y) if relu else y

    # -- the three things a layer needs ------------------------------------------------
    def forward(self, x, relu=False):
        """y (N, Cout, Ho, Wo); ``relu``: max(y, 0), fused into the output stage."""
        method = self._method(x.shape, self.cin, self.cout)
        return self._conv(x, "w", lambda: self.weight, self.bias, self.padding, method, relu)

    def input_grad(self, dy, x_shape, mask=None):
        """dL/dx (x_shape) from dy (N, Cout, Ho, Wo). ``mask`` (like dy): back through a
        ReLU first, i.e. use dy * (mask > 0) (mask = the ReLU's output)."""
        narrow = self.cin * self.k * self.k <= self.cout
        if self.stride != 1 or (self.method in ("auto", "img2col") and narrow):
            # GEMM + col2im (K*K shifted-slice adds): for stride > 1, and where the input is
            # narrow (conv1_1: 27 rows of dcols to add up instead of 576 rows of cols to copy)
            if mask is not None:
                dy = masked(dy, mask)
            return algos.conv2d_input_grad_img2col(dy, self.weight.astype(dy.dtype, copy=False),
                                                   self.padding, self.stride, x_shape,
                                                   active_pool())
        method = self._method(dy.shape, self.cout, self.cin)

        def wr():       # the rotated filter: kept only where the method uses it directly
            if method.startswith("winograd"):
                return algos.rotate_filter(self.weight)
            return self._get(("rot", dy.dtype), lambda: algos.rotate_filter(self.weight))
        return algos.full_conv_input_grad(
            lambda p: self._conv(dy, "rot", wr, None, p, method, mask=mask),
            self.k, self.padding, x_shape)

    def param_grad(self, x, dy):
        """(dL/dweight [Cin, K, K, Cout], dL/dbias [Cout])."""
        return algos.conv2d_weight_grad(x, dy, self.k, self.padding, self.stride,
                                        active_pool())
