"""Attach the tuned engine to a student's network from outside.

``tune(vgg)`` takes a built and loaded student ``VGG19`` (exp 3.1's classifier or exp 3.3's
feature network: anything with a ``layers`` dict) and swaps in layers with the same
``forward``/``backward`` interface that compute with the engine:

* each ``ConvolutionalLayer`` becomes an ``EngineConvolution`` holding the same weight and
  bias (``ConvEngine``: tuned img2col, Winograd F(2x2)/F(4x4) or FFT, picked per shape);
* a ``ConvolutionalLayer`` followed by a ``ReLULayer`` becomes one conv + ReLU layer
  (``relu=True``: the maximum taken in the convolution's output stage, the mask applied in
  its backward's padding copy) and the ReLU a pass-through ``FusedReLU``;
* each ``MaxPoolingLayer`` becomes an ``EngineMaxPooling`` (the same maths, split over the
  engine's threads by channels).

The student's own layer objects are not changed; ``untune(vgg)`` puts them back. The tuned
layers parallelise themselves inside ``labkit.engine.perf.engine_threads()``; ``tune``
returns a ``TunedRun`` with that context, a ``parallel_map`` for independent work, and
``loss_layers``: the tuned style-transfer losses (``labkit.engine.losses``) for
``Objective(..., loss_layers=run.loss_layers)``.
"""
import time
from dataclasses import dataclass

import numpy as np

from labkit.engine.conv_algos import is_channels_last
from labkit.engine.conv_engine import METHODS, ConvEngine, masked
from labkit.engine.losses import LossLayers
from labkit.engine.perf import active_pool, by_channels, engine_threads, run_split


class EngineConvolution:
    """A convolution with the lab layer's interface, computed by ``ConvEngine``.

    weight [Cin, K, K, Cout], bias [Cout]; input (N, Cin, H, W) -> (N, Cout, Ho, Wo).
    ``need_param_grad = False``: backward computes only the input gradient (style transfer).
    ``relu = True``: the layer is conv + ReLU: forward returns max(y, 0) (applied while each
    output-channel range is in cache) and keeps it; backward takes dL/d(max(y, 0)) and masks
    it inside the padding copy that its input gradient makes anyway.
    """

    def __init__(self, kernel_size, channel_in, channel_out, padding, stride, weight, bias,
                 method="auto", need_param_grad=True, relu=False):
        if method not in METHODS:
            raise ValueError(f"EngineConvolution: method must be one of {METHODS}, "
                             f"got {method!r}.")
        self.kernel_size, self.channel_in, self.channel_out = kernel_size, channel_in, channel_out
        self.padding, self.stride, self.method = padding, stride, method
        self.need_param_grad, self.relu = need_param_grad, bool(relu)
        self.output = None
        self.weight = np.asarray(weight)
        self.bias = np.asarray(bias).reshape(-1)
        self._engines = {}              # dtype -> ConvEngine with the weights in that dtype
        self.input = self.input_meta = None
        self.forward_time = self.backward_time = 0.0

    @classmethod
    def like(cls, layer, method="auto", need_param_grad=None, relu=False):
        """The engine twin of a lab ``ConvolutionalLayer`` (its current weight and bias)."""
        if getattr(layer, "weight", None) is None:
            raise ValueError(f"{type(layer).__name__} has no weights yet: tune the network "
                             f"after load_model().")
        weight = np.asarray(layer.weight)
        if need_param_grad is None:
            need_param_grad = getattr(layer, "need_param_grad", True)
        cin, k, _, cout = weight.shape
        return cls(k, cin, cout, int(layer.padding), int(layer.stride), weight, layer.bias,
                   method, need_param_grad, relu)

    def _engine(self, dtype):
        engine = self._engines.get(dtype)
        if engine is None:
            engine = self._engines[dtype] = ConvEngine(
                self.weight.astype(dtype, copy=False), self.bias.astype(dtype, copy=False),
                self.padding, self.stride, self.method)
        return engine

    def forward(self, input):
        start = time.time()
        if input.ndim != 4 or input.shape[1] != self.channel_in:
            raise ValueError(f"EngineConvolution: input has shape {input.shape}, expected "
                             f"(N, {self.channel_in}, H, W).")
        # keep the input only when the parameter gradients need it (frees activations early)
        self.input = input if self.need_param_grad else None
        self.input_meta = (input.shape, input.dtype)
        output = self._engine(input.dtype).forward(input, relu=self.relu)
        self.output = output if self.relu else None
        self.forward_time = time.time() - start
        return output

    def backward(self, top_diff):
        start = time.time()
        if self.input_meta is None:
            raise RuntimeError("EngineConvolution.backward() before forward().")
        shape, dtype = self.input_meta
        top_diff = np.asarray(top_diff, dtype=dtype)
        engine = self._engine(dtype)
        mask = self.output if self.relu else None
        if mask is not None and self.need_param_grad:   # both gradients need dy * (y > 0)
            top_diff, mask = masked(top_diff, mask), None
        bottom_diff = engine.input_grad(top_diff, shape, mask=mask)
        if self.need_param_grad:
            self.d_weight, self.d_bias = engine.param_grad(self.input, top_diff)
        self.backward_time = time.time() - start
        return bottom_diff

    def load_param(self, weight, bias):
        self.weight, self.bias = np.asarray(weight), np.asarray(bias).reshape(-1)
        self._engines = {}

    def get_gradient(self):
        return self.d_weight, self.d_bias

    def update_param(self, lr):
        self.load_param(self.weight - lr * self.d_weight, self.bias - lr * self.d_bias)

    def get_forward_time(self):
        return self.forward_time

    def get_backward_time(self):
        return self.backward_time


class FusedReLU:
    """Stands in for a ReLU whose work the convolution before it does (``relu=True``): forward
    and backward pass their argument through (the values are already max(y, 0); the mask is
    applied by the convolution's backward)."""

    forward_time = backward_time = 0.0

    def forward(self, input):
        return input

    def backward(self, top_diff):
        return top_diff

    def get_forward_time(self):
        return 0.0

    def get_backward_time(self):
        return 0.0


# ------------------------------------------------------------------------------ pooling
def _window_starts(k, s, n_out):
    return [slice(o, o + s * (n_out - 1) + 1, s) for o in range(k)]


def _windows(k, s, out_shape, axes):
    """Index tuples of the K*K window offsets (row-major), on spatial ``axes`` of a 4-D array."""
    rows = _window_starts(k, s, out_shape[axes[0]])
    cols = _window_starts(k, s, out_shape[axes[1]])
    for r in rows:
        for c in cols:
            index = [slice(None)] * 4
            index[axes[0]], index[axes[1]] = r, c
            yield tuple(index)


def pool_max(x, k, s, out=None, axes=(2, 3)):
    """out = the maximum over each K x K window of x, stride s; the windows run over ``axes``
    ((2, 3): NCHW; (1, 2): channels-last NHWC). ``out`` None: a new array (floor rule)."""
    if out is None:
        shape = list(x.shape)
        for a in axes:
            shape[a] = (shape[a] - k) // s + 1
        out = np.empty(shape, dtype=x.dtype)
    for j, index in enumerate(_windows(k, s, out.shape, axes)):
        if j == 0:
            np.copyto(out, x[index])
        else:
            np.maximum(out, x[index], out=out)
    return out


def pool_max_grad(x, y, dy, k, s, out, axes=(2, 3)):
    """out (like x) = dy routed to the first (row-major) maximum of each window."""
    windows = list(_windows(k, s, y.shape, axes))
    h, w = axes
    disjoint = k == s and y.shape[h] * s == x.shape[h] and y.shape[w] * s == x.shape[w]
    if not disjoint:
        out.fill(0)
    claimed = None
    for j, index in enumerate(windows):
        is_max = np.equal(x[index], y)
        if claimed is not None:
            np.greater(is_max, claimed, out=is_max)        # a maximum not claimed before
            if j + 1 < len(windows):
                claimed |= is_max
        else:
            claimed = is_max          # read by the multiply below before it changes
        if disjoint:
            np.multiply(dy, is_max, out=out[index])
        else:
            out[index] += dy * is_max
    return out


class EngineMaxPooling:
    """Max-pooling with the lab layer's interface; channels split over the engine's threads.
    A channels-last input (the engine's convolutions return views of such arrays) is pooled
    in that layout (runs of C contiguous numbers) and the result is returned the same way."""

    def __init__(self, kernel_size, stride):
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.input = self.output = None
        self.forward_time = self.backward_time = 0.0

    def forward(self, input):
        start = time.time()
        k, s = self.kernel_size, self.stride
        n, c, h, w = input.shape
        if h < k or w < k:
            raise ValueError(f"EngineMaxPooling: input {input.shape} is smaller than the "
                             f"{k}x{k} window.")
        self.input = input
        ho, wo = (h - k) // s + 1, (w - k) // s + 1
        if is_channels_last(input):
            xl, out = input.transpose(0, 2, 3, 1), np.empty((n, ho, wo, c), dtype=input.dtype)
            # by ranges of output rows (rows r0..r1 read input rows r0*s .. (r1-1)*s + k)
            run_split(active_pool(), lambda r0, r1: pool_max(
                xl[:, r0 * s:(r1 - 1) * s + k], k, s, out[:, r0:r1], (1, 2)), ho)
            self.output = out.transpose(0, 3, 1, 2)
        else:
            self.output = np.empty((n, c, ho, wo), dtype=input.dtype)
            by_channels(lambda ch: pool_max(input[:, ch], k, s, self.output[:, ch]), c)
        self.forward_time = time.time() - start
        return self.output

    def backward(self, top_diff):
        start = time.time()
        if self.output is None:
            raise RuntimeError("EngineMaxPooling.backward() before forward().")
        x, y, k, s = self.input, self.output, self.kernel_size, self.stride
        top_diff = np.asarray(top_diff, dtype=y.dtype)
        if is_channels_last(x):
            xl, yl = x.transpose(0, 2, 3, 1), y.transpose(0, 2, 3, 1)
            dl = top_diff.transpose(0, 2, 3, 1)
            out = np.empty(xl.shape, dtype=y.dtype)
            if k == s:      # disjoint windows: ranges of output rows write disjoint input rows
                h, ho = xl.shape[1], yl.shape[1]

                def rows(r0, r1):
                    hi = r1 * s if r1 < ho else h       # the last range: the floor rule's rows
                    pool_max_grad(xl[:, r0 * s:hi], yl[:, r0:r1], dl[:, r0:r1], k, s,
                                  out[:, r0 * s:hi], (1, 2))
                run_split(active_pool(), rows, ho)
            else:
                by_channels(lambda ch: pool_max_grad(xl[..., ch], yl[..., ch], dl[..., ch], k,
                                                     s, out[..., ch], (1, 2)), x.shape[1])
            bottom_diff = out.transpose(0, 3, 1, 2)
        else:
            bottom_diff = np.empty(x.shape, dtype=y.dtype)
            by_channels(lambda ch: pool_max_grad(x[:, ch], y[:, ch], top_diff[:, ch], k, s,
                                                 bottom_diff[:, ch]), x.shape[1])
        self.backward_time = time.time() - start
        return bottom_diff


# ------------------------------------------------------------------------------ attaching
def _type_name(layer):
    """The layer's class name (a sandboxed grader's proxy says its student class's)."""
    return getattr(layer, "_labkit_student_type", None) or type(layer).__name__


def _is_conv(layer):
    return _type_name(layer) == "ConvolutionalLayer" and hasattr(layer, "kernel_size")


def _is_maxpool(layer):
    return _type_name(layer) == "MaxPoolingLayer" and hasattr(layer, "kernel_size")


@dataclass
class TunedRun:
    """What a tuned network runs in: ``with run.context(): ...`` (the engine's threads) and
    ``run.parallel_map(fn, items)`` (independent work, e.g. the style losses, on the pool)."""
    swapped: int
    loss_layers: object = LossLayers      # Objective(loss_layers=...): the tuned losses

    @staticmethod
    def context():
        return engine_threads(True)

    @staticmethod
    def parallel_map(fn, items):
        pool = active_pool()
        if pool is None:
            return [fn(item) for item in items]
        futures = [pool.submit(fn, item) for item in items]
        return [f.result() for f in futures]


def _is_relu(layer):
    return _type_name(layer) == "ReLULayer"


def tune(vgg, method="auto", need_param_grad=None, pooling=True, fuse_relu=True, keep=()):
    """Swap engine layers into ``vgg.layers`` (after ``load_model()``); returns a TunedRun.

    ``need_param_grad``: None keeps each layer's own setting (True when it has none);
    False for a feature network whose weights are fixed (exp 3.3).
    ``fuse_relu``: a convolution followed by a ReLU becomes one conv + ReLU layer and the
    ReLU a ``FusedReLU`` (pass-through), unless the convolution's name is in ``keep`` (the
    layers whose outputs are read, e.g. a loss on conv4_2: its output must stay max-free).
    """
    layers = getattr(vgg, "layers", None)
    if not isinstance(layers, dict) or not layers:
        raise ValueError("tune: the network has no layers dict; call build_model() and "
                         "load_model() first.")
    # graded in the sandbox ``vgg`` is a proxy: its dict arrives as a copy; the engine's
    # layers stay in this process (to_student: the student's network calls them back)
    remote = getattr(vgg, "_labkit_student_type", None) is not None
    originals = (_REMOTE_ORIGINALS.setdefault(id(vgg), {}) if remote
                 else vgg.__dict__.setdefault("_untuned_layers", {}))
    keep = set(keep)
    names = list(layers)
    swapped = 0
    for i, (name, layer) in enumerate(list(layers.items())):
        if _is_conv(layer):
            nxt = layers[names[i + 1]] if i + 1 < len(names) else None
            fuse = fuse_relu and name not in keep and nxt is not None and _is_relu(nxt)
            layers[name] = EngineConvolution.like(layer, method, need_param_grad, relu=fuse)
            if fuse:
                originals.setdefault(names[i + 1], nxt)
                layers[names[i + 1]] = FusedReLU()
                swapped += 1
        elif pooling and _is_maxpool(layer):
            layers[name] = EngineMaxPooling(layer.kernel_size, layer.stride)
        else:
            continue
        originals.setdefault(name, layer)
        swapped += 1
    if remote:
        from labkit.runtime.student import to_student
        vgg.layers = {n: to_student(l) if n in originals else l for n, l in layers.items()}
    return TunedRun(swapped)


_REMOTE_ORIGINALS = {}      # id(proxy) -> the student's own layers (sandboxed grading)


def untune(vgg):
    """Put the student's own layers back."""
    if getattr(vgg, "_labkit_student_type", None) is not None:
        layers = vgg.layers
        layers.update(_REMOTE_ORIGINALS.pop(id(vgg), {}))
        vgg.layers = layers
        return
    for name, layer in vgg.__dict__.pop("_untuned_layers", {}).items():
        vgg.layers[name] = layer


def tune_for_transfer(vgg, method="auto", keep=()):
    """The style transfer's tune(): large buffers reused between steps, no parameter
    gradients, the outputs the losses read (``keep``) left unfused. What
    ``main_exp_3_3.py --conv`` calls (labkit.runtime never imports the engine)."""
    from labkit.engine.perf import reuse_large_allocations
    reuse_large_allocations()
    return tune(vgg, method=method, need_param_grad=False, keep=keep)
