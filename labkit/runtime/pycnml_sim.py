"""A NumPy simulator of the Cambricon ``pycnml`` binding used by the DLP lab (exp 3.2).

Use it as ``from labkit import pycnml_sim as pycnml`` so that ``stu_upload/vgg19_demo.py`` runs
unchanged on the real MLU270 binding where it is installed and on this simulator elsewhere.

What is simulated (the MLU's arithmetic, not just float32):

* ``setInputShape`` inserts a hidden fp32 -> fp16 cast: the input is rounded to float32 and
  then to float16 before the first layer.
* Activations and biases are held in float16 between layers.
* Conv and MLP layers quantise their *input* with the layer's input ``QuantParam`` and their
  *filters* with the filter ``QuantParam`` given to ``loadParams`` to INT8, using CNML's
  fixed-point convention ``x ~= q * 2**position / scale``, i.e.
  ``q = clip(round(x * scale / 2**position), -128, 127)`` (offset 0).  ``round`` is IEEE
  round-to-nearest, ties to even (``numpy.rint``); the device rounds to nearest.
* The multiply-accumulate is exact integer arithmetic.  It is done as an img2col GEMM on
  integer-valued float64 arrays, which is exact while every partial sum stays below 2**53
  (here at most 128*128*K, about 4e8 for VGG19's fc6) and much faster than int64 matmul.
* The integer sum is rescaled by both quantisation steps, ``2**(p_in + p_f) / (s_in * s_f)``,
  the float16 bias is added (in float64) and the result is rounded once to float16.
  Results that exceed the float16 range become +-inf, as an IEEE cast does.
* ReLU, max pooling (no padding, floor output size) and flatten work on float16 values.
  Flatten follows pycnml's ``CnmlFlattenLayer``: it transposes NCHW to NHWC, reshapes, and
  (for its 4-d output shape) transposes back, so the flat vector runs over H, W, C (channel
  fastest), the order of MatConvNet's fc6 weight ``[H, W, C, Cout]``. An MLP after it
  therefore takes fc6 as ``reshape([H*W*C, Cout]).T`` (the original lab's given code).  Softmax is computed in float32 from float16 inputs; its
  float32 result is what the hidden fp16 -> fp32 output cast layer returns.
* Filters and biases arrive as float sequences and are first rounded to float32 (the C
  binding's ``float``); bias then to float16.

What is not simulated: timing, core parallelism (``core_num`` is only checked and stored),
memory limits, and the device's internal rounding order inside the rescale step (we round
once, at the end).  Misuse raises :class:`CnmlError` with a message naming the fix, where the
real library would often fail silently or crash.
"""
from __future__ import annotations

import math
import os

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SIMULATOR = True
MLU270 = "MLU270"
MLU220 = "MLU220"
NUM_QUANT_PAIRS = 19  # VGG19: 16 convs, fc6, fc7, fc8
_GEMM_BLOCK = 1 << 22  # elements of a float64 temporary (32 MiB) per GEMM block
_EXACT_K = 1024  # int8 x int8 products (|p| <= 2**14) summed 1024 at a time: |sum| <= 2**24,
#                  every partial sum an integer float32 holds exactly, in any order


def _int_matmul(a, b):
    """``a @ b`` (float32 arrays holding int8 values) exactly, as float64: float32 GEMMs
    (twice float64's speed) over 1024-long slices of the inner dimension, summed in
    float64."""
    k = a.shape[1]
    if k <= _EXACT_K:
        return (a @ b).astype(np.float64)
    out = np.zeros((a.shape[0], b.shape[1]))
    for k0 in range(0, k, _EXACT_K):
        out += a[:, k0:k0 + _EXACT_K] @ b[k0:k0 + _EXACT_K]
    return out


def backend_name() -> str:
    return "pycnml simulator (NumPy)"


class CnmlError(RuntimeError, ValueError):
    """Misuse of the (simulated) pycnml API; catchable as RuntimeError or ValueError."""


class QuantParam:
    """INT8 quantisation parameter: a real ``x`` is stored as ``q ~= x * scale / 2**position``."""

    def __init__(self, position: int, scale: float):
        self.position, self.scale = _check_qp(position, scale, "QuantParam")

    def __repr__(self) -> str:
        return f"QuantParam(position={self.position}, scale={self.scale!r})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, QuantParam) and self.position == other.position
                and self.scale == other.scale)


def _check_qp(position, scale, what="quantisation parameter"):
    if position is None or scale is None:
        raise CnmlError(f"{what} is missing (None); pass pycnml.QuantParam(position, scale), "
                        "e.g. from the quantisation .npz or QuantTool.get_quant_param")
    if float(position) != int(position):
        raise CnmlError(f"{what}: position must be an integer, got {position!r}")
    s = float(scale)
    if not (math.isfinite(s) and s > 0):
        raise CnmlError(f"{what}: scale must be a finite positive number, got {scale!r}")
    return int(position), s


def _as_qp(q, what) -> QuantParam:
    if q is None:
        _check_qp(None, None, what)
    if not (hasattr(q, "position") and hasattr(q, "scale")):
        raise CnmlError(f"{what} must be a pycnml.QuantParam, got {type(q).__name__}")
    return QuantParam(*_check_qp(q.position, q.scale, what))


def quantize(x, position, scale) -> np.ndarray:
    """``q = clip(rint(x * scale / 2**position), -128, 127)`` as int8 (ties round to even)."""
    position, scale = _check_qp(position, scale)
    v = np.array(x, dtype=np.float64)  # a copy, worked on in place to spare memory
    v *= scale / 2.0 ** position
    np.clip(np.rint(v, out=v), -128, 127, out=v)
    return v.astype(np.int8)


def dequantize(q, position, scale) -> np.ndarray:
    """The real value ``q * 2**position / scale`` (float64) of an int8 code."""
    position, scale = _check_qp(position, scale)
    return np.asarray(q, dtype=np.float64) * (2.0 ** position / scale)


def calibrate(x) -> tuple[int, float]:
    """``(position, scale)`` mapping ``m = max|x|`` to 127, with scale in [1, 2).

    ``position = ceil(log2(m / 127))``, ``scale = 127 * 2**position / m``.  An all-zero tensor
    gives ``(0, 1.0)`` (any parameter represents it exactly).
    """
    a = np.asarray(x, dtype=np.float64)
    m = float(np.max(np.abs(a))) if a.size else 0.0
    if not math.isfinite(m):
        raise CnmlError("calibrate: tensor contains inf or nan; cannot choose a quant parameter")
    if m == 0.0:
        return 0, 1.0
    position = math.ceil(math.log2(m / 127.0))
    scale = 127.0 * 2.0 ** position / m
    if not 1.0 <= scale < 2.0:  # log2 rounded across a power of two: move one step
        position += 1 if scale < 1.0 else -1
        scale = 127.0 * 2.0 ** position / m
    return position, scale


class QuantTool:
    """Calibration helper: per-tensor max-abs statistics -> QuantParam.

    ``QuantTool.get_quant_param(array)`` calibrates one tensor.  For calibration over several
    batches, ``observe(name, array)`` keeps a running max |x| per name and ``quant_param(name)``
    returns the parameter for all data seen so far.
    """

    def __init__(self):
        self._max = {}

    @staticmethod
    def get_quant_param(array) -> QuantParam:
        return QuantParam(*calibrate(array))

    getQuantParam = get_quant_param  # pycnnl spelling

    def observe(self, name, array) -> None:
        m = float(np.max(np.abs(np.asarray(array, dtype=np.float64)))) if np.size(array) else 0.0
        self._max[name] = max(self._max.get(name, 0.0), m)

    def quant_param(self, name) -> QuantParam:
        if name not in self._max:
            raise CnmlError(f"QuantTool: nothing observed for {name!r}; call observe() first")
        return QuantParam(*calibrate(self._max[name]))


def _pairs(params, what):
    out = []
    for i, p in enumerate(params):
        pos, sc = (p.position, p.scale) if hasattr(p, "position") else (p or (None, None))
        out.extend(_check_qp(pos, sc, f"{what}[{i}]"))
    return np.asarray(out, dtype=np.float64)


def save_quant_npz(path, input_params, filter_params, expected_pairs=NUM_QUANT_PAIRS) -> None:
    """Write the lab's quant file: keys ``input`` and ``filter``, flat ``[pos0, scale0, ...]``.

    Parameters are QuantParam objects or ``(position, scale)`` pairs, one per quantised layer.
    ``expected_pairs=None`` allows any (equal) count.
    """
    inp, fil = _pairs(input_params, "input_params"), _pairs(filter_params, "filter_params")
    for key, arr in (("input", inp), ("filter", fil)):
        if expected_pairs is not None and arr.size != 2 * expected_pairs:
            raise CnmlError(f"save_quant_npz: {key} has {arr.size // 2} pairs, expected "
                            f"{expected_pairs} (16 convs, fc6, fc7, fc8)")
    if inp.size != fil.size:
        raise CnmlError(f"save_quant_npz: {inp.size // 2} input pairs but {fil.size // 2} "
                        "filter pairs; give one of each per quantised layer")
    np.savez(path, input=inp, filter=fil)


def load_quant_npz(path, expected_pairs=NUM_QUANT_PAIRS):
    """Read the lab's quant file; returns ``(input_params, filter_params)`` lists of QuantParam."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"quantisation parameter file not found: {path!r} (expected an "
                                ".npz with keys 'input' and 'filter', e.g. "
                                "vgg19_quant_param_new.npz; see QuantTool/save_quant_npz)")
    result = []
    with np.load(path) as data:
        for key in ("input", "filter"):
            if key not in data.files:
                raise CnmlError(f"{path}: missing key {key!r} (found {sorted(data.files)}); the "
                                "file needs keys 'input' and 'filter'")
            arr = np.asarray(data[key], dtype=np.float64).ravel()
            if arr.size % 2 or (expected_pairs is not None and arr.size != 2 * expected_pairs):
                raise CnmlError(f"{path}: {key!r} holds {arr.size} numbers, expected "
                                f"{2 * expected_pairs if expected_pairs else 'an even count'} "
                                "(flat [pos0, scale0, pos1, scale1, ...] pairs)")
            result.append([QuantParam(*_check_qp(arr[i], arr[i + 1], f"{path}:{key}[{i // 2}]"))
                           for i in range(0, arr.size, 2)])
    return result[0], result[1]


QuantTool.save_quant_npz = staticmethod(save_quant_npz)
QuantTool.load_quant_npz = staticmethod(load_quant_npz)


# ----------------------------------------------------------------------------------- layers
def _ints(where, lo, **values):
    """Check that every value is an integer >= lo; return them as ints."""
    for label, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or int(v) != v or v < lo:
            raise CnmlError(f"{where}: {label} must be an integer >= {lo}, got {v!r}")
    return [int(v) for v in values.values()]


_SLICE = 1 << 20          # values quantised at once by loadParams


class _Layer:
    quantized = False
    kind = "layer"

    def __init__(self, name, in_shape):
        self.name, self.in_shape = str(name), tuple(in_shape)
        self.out_shape = self.in_shape


class _QuantLayer(_Layer):
    quantized = True

    def __init__(self, name, in_shape, input_quant):
        super().__init__(name, in_shape)
        self.input_quant = _as_qp(input_quant, f"{self.kind} layer {name!r}: input_quant")
        self.w = self.bias = self.filter_quant = None

    def load(self, filt, bias, filter_quant, where):
        fq = _as_qp(filter_quant, f"{where}: filter_quant")
        f = np.asarray(filt).reshape(-1)
        if f.dtype.kind not in "biuf":
            f = np.asarray(f, dtype=np.float32)     # what the binding's float* would take
        b = np.asarray(bias, dtype=np.float32).ravel()
        n = int(np.prod(self.w_shape))
        if f.size != n:
            raise CnmlError(f"{where}: filter has {f.size} values, expected {n} = "
                            f"{' x '.join(map(str, self.w_shape))} {self.w_desc}")
        if b.size != self.w_shape[0]:
            raise CnmlError(f"{where}: bias has {b.size} values, expected {self.w_shape[0]} "
                            "(one per output channel)")
        # the hidden fp32 cast, then INT8, a slice at a time (fc6 is 103 M values: whole,
        # its float32 and float64 copies would be 1.2 GB of memory touched once)
        w = np.empty(n, dtype=np.int8)
        for start in range(0, n, _SLICE):
            part = f[start:start + _SLICE].astype(np.float32)
            w[start:start + _SLICE] = quantize(part, fq.position, fq.scale)
        self.w = w.reshape(self.w_shape[0], -1)
        self.bias, self.filter_quant = b.astype(np.float16), fq

    def _finish(self, acc):
        """Exact int sums (channel axis 1) -> real scale, + fp16 bias, one rounding to fp16."""
        iq, fq = self.input_quant, self.filter_quant
        bias = self.bias.astype(np.float64).reshape((1, -1) + (1,) * (acc.ndim - 2))
        y = acc * (2.0 ** (iq.position + fq.position) / (iq.scale * fq.scale)) + bias
        return y.astype(np.float16)

    def _qin(self, x):
        return quantize(x, self.input_quant.position, self.input_quant.scale)


class _Conv(_QuantLayer):
    kind = "conv"
    w_desc = "(flatten the filter as [Cout, Cin, kh, kw])"

    def __init__(self, name, in_shape, cout, k, stride, dilation, pad, input_quant):
        where = f"createConvLayer({name!r})"
        cout, self.k, self.s, self.d = _ints(where, 1, out_channel=cout, kernel_size=k,
                                             stride=stride, dilation=dilation)
        (self.p,) = _ints(where, 0, pad=pad)
        super().__init__(name, in_shape, input_quant)
        n, c, h, w = self.in_shape
        ek = self.d * (self.k - 1) + 1
        ho, wo = (h + 2 * self.p - ek) // self.s + 1, (w + 2 * self.p - ek) // self.s + 1
        if ho <= 0 or wo <= 0:
            raise CnmlError(f"createConvLayer({name!r}): output would be empty ({ho}x{wo}) for "
                            f"input {h}x{w}, kernel {k}, dilation {dilation}, pad {pad}, stride "
                            f"{stride}; use a smaller kernel/stride or more padding")
        self.out_shape = (n, cout, ho, wo)
        self.w_shape = (cout, c, self.k, self.k)

    def run(self, x):
        n, c, _, _ = self.in_shape
        _, cout, ho, wo = self.out_shape
        k, p = self.k, self.p
        q = np.pad(self._qin(x), ((0, 0), (0, 0), (p, p), (p, p))).astype(np.float32)
        ek = self.d * (k - 1) + 1
        win = sliding_window_view(q, (ek, ek), axis=(2, 3))
        win = win[:, :, ::self.s, ::self.s, ::self.d, ::self.d]  # (N, C, Ho, Wo, k, k)
        win = win.transpose(0, 1, 4, 5, 2, 3)  # (N, C, k, k, Ho, Wo)
        wmat = self.w.astype(np.float32)  # (Cout, C*k*k)
        K = c * k * k
        rows = max(1, _GEMM_BLOCK // (K * wo))
        acc = np.empty((n, cout, ho, wo), dtype=np.float64)
        for b in range(n):
            for h0 in range(0, ho, rows):
                h1 = min(ho, h0 + rows)
                cols = win[b, :, :, :, h0:h1].reshape(K, (h1 - h0) * wo)  # copies
                acc[b, :, h0:h1] = _int_matmul(wmat, cols).reshape(cout, h1 - h0, wo)
        return self._finish(acc)


class _Mlp(_QuantLayer):
    kind = "mlp"
    w_desc = "(flatten the weight as [Cout, Cin])"

    def __init__(self, name, in_shape, output_num, input_quant):
        (cout,) = _ints(f"createMlpLayer({name!r})", 1, output_num=output_num)
        super().__init__(name, in_shape, input_quant)
        self.out_shape = (self.in_shape[0], cout, 1, 1)
        self.w_shape = (cout, int(np.prod(self.in_shape[1:])))

    def run(self, x):
        n = self.in_shape[0]
        xq = self._qin(x).reshape(n, -1).astype(np.float32)
        cout, K = self.w_shape
        acc = np.empty((n, cout), dtype=np.float64)
        rows = max(1, _GEMM_BLOCK // K)
        for r0 in range(0, cout, rows):  # convert the int8 weight to float64 block by block
            r1 = min(cout, r0 + rows)
            acc[:, r0:r1] = _int_matmul(xq, self.w[r0:r1].astype(np.float32).T)
        return self._finish(acc).reshape(self.out_shape)


class _Relu(_Layer):
    kind = "relu"

    def run(self, x):
        return np.maximum(x, np.float16(0))


class _Pool(_Layer):
    kind = "pool"

    def __init__(self, name, in_shape, kernel, stride):
        self.k, self.s = _ints(f"createPoolingLayer({name!r})", 1, kernel=kernel, stride=stride)
        super().__init__(name, in_shape)
        n, c, h, w = self.in_shape
        ho, wo = (h - self.k) // self.s + 1, (w - self.k) // self.s + 1
        if ho <= 0 or wo <= 0:
            raise CnmlError(f"createPoolingLayer({name!r}): output would be empty: kernel "
                            f"{kernel} is larger than the {h}x{w} input; use a smaller kernel")
        self.out_shape = (n, c, ho, wo)

    def run(self, x):
        win = sliding_window_view(x, (self.k, self.k), axis=(2, 3))[:, :, ::self.s, ::self.s]
        return win.max(axis=(4, 5))


class _Flatten(_Layer):
    kind = "flatten"

    def __init__(self, name, in_shape, shape):
        super().__init__(name, in_shape)
        shape = tuple(int(v) for v in shape)
        if len(shape) != 4 or min(shape) < 1:
            raise CnmlError(f"createFlattenLayer({name!r}): output shape must be 4 positive "
                            f"numbers like [1, 25088, 1, 1], got {list(shape)}")
        if int(np.prod(shape)) != int(np.prod(self.in_shape)):
            raise CnmlError(f"createFlattenLayer({name!r}): shape {list(shape)} holds "
                            f"{int(np.prod(shape))} values but the input {list(self.in_shape)} "
                            f"holds {int(np.prod(self.in_shape))}")
        self.out_shape = shape

    def run(self, x):
        # CnmlFlattenLayer: NCHW -> NHWC, reshape, back to the NCHW view of the output
        # shape [N, D, 1, 1]: the D values run over (h, w, c), channel fastest
        n, d, h, w = self.out_shape
        flat = x.transpose(0, 2, 3, 1).reshape(n, h, w, d)
        return flat.transpose(0, 3, 1, 2)


class _Softmax(_Layer):
    kind = "softmax"

    def __init__(self, name, in_shape, axis):
        super().__init__(name, in_shape)
        if axis not in (0, 1, 2, 3):
            raise CnmlError(f"createSoftmaxLayer({name!r}): axis must be 0..3, got {axis!r}")
        self.axis = axis

    def run(self, x):
        z = x.astype(np.float32)
        e = np.exp(z - z.max(axis=self.axis, keepdims=True))
        return e / e.sum(axis=self.axis, keepdims=True)  # float32


# ------------------------------------------------------------------------------------- net
class CnmlNet:
    """Simulated ``pycnml.CnmlNet``: build layers, load INT8-quantised parameters, run."""

    def __init__(self, core_num=1, core_version=MLU270):
        if core_version not in (MLU270, MLU220):
            raise CnmlError(f"core_version must be pycnml.MLU270 or pycnml.MLU220, "
                            f"got {core_version!r}")
        (self.core_num,) = _ints("CnmlNet", 1, core_num=core_num)
        self.core_version, self._in_shape, self._layers = core_version, None, []
        self._input = self._output = None
        self._output_cast = False  # the hidden fp16 -> fp32 cast, appended by the first loadParams
        self.forward_count = 0     # the simulator's own: how many forward() calls ran (tests)

    def setInputShape(self, n, c, h, w):
        if self._layers:
            raise CnmlError("setInputShape must be called before any layer is created")
        self._in_shape = tuple(_ints("setInputShape", 1, n=n, c=c, h=h, w=w))

    def _add(self, cls, name, *args):
        if self._in_shape is None:
            raise CnmlError(f"cannot create layer {name!r}: call setInputShape(n, c, h, w) first")
        if self._output_cast:
            raise CnmlError(f"cannot create layer {name!r} after loadParams (the output cast "
                            "layer is already appended); create all layers before loading")
        prev = self._layers[-1].out_shape if self._layers else self._in_shape
        self._layers.append(cls(name, prev, *args))

    def createConvLayer(self, name, out_channel, kernel_size, stride, dilation, pad, input_quant):
        self._add(_Conv, name, out_channel, kernel_size, stride, dilation, pad, input_quant)

    def createMlpLayer(self, name, output_num, input_quant):
        self._add(_Mlp, name, output_num, input_quant)

    def createReLuLayer(self, name):
        self._add(_Relu, name)

    def createPoolingLayer(self, name, kernel, stride):
        self._add(_Pool, name, kernel, stride)

    def createFlattenLayer(self, name, shape):
        self._add(_Flatten, name, shape)

    def createSoftmaxLayer(self, name, axis=1):
        self._add(_Softmax, name, axis)

    def size(self) -> int:
        return len(self._layers)

    def _layer(self, i, caller):
        if isinstance(i, bool) or int(i) != i or not 0 <= i < len(self._layers):
            raise CnmlError(f"{caller}: unknown layer index {i!r}; the net has "
                            f"{len(self._layers)} layers (valid: 0..{len(self._layers) - 1})")
        return self._layers[int(i)]

    def getLayerName(self, i) -> str:
        return self._layer(i, "getLayerName").name

    def needToBeQuantized(self, i) -> bool:
        return self._layer(i, "needToBeQuantized").quantized

    def loadParams(self, layer_id, filter_flat, bias_flat, filter_quant):
        layer = self._layer(layer_id, "loadParams")
        where = f"loadParams(layer {layer_id} {layer.name!r})"
        if not layer.quantized:
            raise CnmlError(f"{where}: a {layer.kind} layer has no parameters; only conv and mlp "
                            "layers (needToBeQuantized(i) == True) take loadParams")
        layer.load(filter_flat, bias_flat, filter_quant, where)
        self._output_cast = True

    def setInputData(self, data):
        if self._in_shape is None:
            raise CnmlError("setInputData: call setInputShape(n, c, h, w) first")
        x = np.asarray(data, dtype=np.float32).ravel()
        need = int(np.prod(self._in_shape))
        if x.size != need:
            raise CnmlError(f"setInputData: got {x.size} values, expected {need} = "
                            f"{' x '.join(map(str, self._in_shape))} (NCHW, flattened)")
        self._input = x.reshape(self._in_shape)

    def forward(self):
        if not self._layers:
            raise CnmlError("forward: the net has no layers; create layers first")
        for i, layer in enumerate(self._layers):
            if layer.quantized and layer.w is None:
                raise CnmlError(f"forward: layer {i} {layer.name!r} has no parameters; call "
                                f"loadParams({i}, filter, bias, filter_quant) first")
        if self._input is None:
            raise CnmlError("forward: no input data; call setInputData(flat NCHW floats) first")
        with np.errstate(over="ignore"):
            x = self._input.astype(np.float16)  # hidden fp32 -> fp16 input cast
            for layer in self._layers:
                x = layer.run(x.astype(np.float16, copy=False))
        self._output = np.asarray(x, dtype=np.float32).ravel()  # hidden fp16 -> fp32 cast
        self.forward_count += 1

    def getOutputData(self):
        if self._output is None:
            raise CnmlError("getOutputData: no output yet; call forward() first")
        return self._output.tolist()
