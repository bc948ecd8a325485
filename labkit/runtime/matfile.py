"""Read MatConvNet's ``imagenet-vgg-verydeep-19.mat`` in both layouts.

* legacy (beta16): top-level ``layers``, ``classes``, ``normalization``;
* meta (beta17+):  top-level ``layers``, ``meta`` (``inputs``, ``classes``, ``normalization``).

Fields are read by *name*, which works for both layouts' field orders. Conv weights stay in
the file's ``[K, K, Cin, Cout]`` float32 layout; biases are flattened to ``[Cout]``.
Every failure raises :class:`WeightsFileError` with a message that says what is wrong and
what to do.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.cli import input_problem
from labkit.runtime.matcheck import MatStructureError, check_mat5


class WeightsFileError(Exception):
    """The weights file is missing, unreadable or not a VGG19 MatConvNet file."""


@dataclass
class MatLayer:
    name: str
    type: str
    weight: np.ndarray = None      # conv: [K, K, Cin, Cout] as in the file
    bias: np.ndarray = None        # conv: [Cout]
    pad: tuple = (0, 0, 0, 0)      # top, bottom, left, right
    stride: tuple = (1, 1)
    pool: tuple = None             # pool: (kh, kw)


@dataclass
class VGGWeights:
    path: str
    layout: str                    # "legacy" or "meta"
    layers: list
    mean_pixel: np.ndarray         # (3,) RGB
    class_names: list = field(default_factory=list)

    def layer(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def num_classes(self):
        return self.layer("fc8").weight.shape[-1]


def missing_file_message(path):
    """The one message a user needs when the real weights file is not there."""
    from labkit.runtime.cli import looked_in
    return (
        f"VGG19 weights not found: {path} ({looked_in(path)})\n"
        f"  The lab needs MatConvNet's '{spec.REAL_FILE_NAME}' (pre-trained VGG19).\n"
        f"  Get it from {spec.LEGACY_URL}\n"
        f"     ({spec.LEGACY_SIZE_TEXT}, MD5 {spec.LEGACY_MD5})\n"
        f"  or the newer layout from {spec.META_URL} (about 510 MiB, "
        f"{spec.META_SIZE_BYTES:,} bytes); both layouts are read.\n"
        f"  Put it at models/{spec.REAL_FILE_NAME} or pass its path with --weights.\n"
        f"  No weights? `python main_exp_3_1.py --demo` runs the same code on a small "
        f"random-weight VGG19.")


def check_weights_path(path, flag="--weights", download=False):
    """The weights path a driver was given, checked before any slow work: the default
    (``models/...``) is looked for in the current folder, then the repository; missing
    (unless it is to be downloaded), a folder, a device or FIFO, unreadable or empty is a
    :class:`WeightsFileError` naming ``flag``. Returns the path to use."""
    from labkit.runtime.cli import DEFAULT_WEIGHTS, find_default
    path = os.fspath(path)
    if os.path.normpath(path) == os.path.normpath(DEFAULT_WEIGHTS):
        path = find_default(path)
    if not os.path.lexists(path) and not download:
        raise WeightsFileError(missing_file_message(path))
    if os.path.lexists(path):
        problem = input_problem(path)
        if problem and problem.startswith("is empty"):
            raise WeightsFileError(f"{flag} {path} is empty (0 bytes): an interrupted "
                                   f"download? Download it again; the legacy file's MD5 is "
                                   f"{spec.LEGACY_MD5}.")
        if problem:
            raise WeightsFileError(f"{flag} {path} {problem}.")
    return path


def _str(value):
    """A MATLAB char array as loaded -> Python str."""
    arr = np.asarray(value)
    while arr.dtype == object and arr.size == 1:
        arr = np.asarray(arr.reshape(-1)[0])
    if arr.size == 0:
        return ""
    return str(arr.reshape(-1)[0])


def _ints(value, default):
    arr = np.asarray(value)
    if arr.size == 0:
        return default
    values = arr.astype(np.float64).reshape(-1)
    if not np.all(np.isfinite(values)) or np.any(np.abs(values) > 1e6):
        raise WeightsFileError(f"a size field holds {values}, not small whole numbers: "
                               f"the file is corrupt.")
    return tuple(int(v) for v in values)


def _field(record, name, where):
    if record.dtype.names is None or name not in record.dtype.names:
        raise WeightsFileError(f"{where} has no field '{name}' (fields: {record.dtype.names}): "
                               f"this is not a MatConvNet VGG19 file.")
    return record[name]


def c_order(array, dtype, block=64):
    """``array`` as a C-ordered (row-major) ``dtype`` copy, equal element for element.

    MATLAB files hold arrays in column-major (Fortran) order, and the lab's layouts are
    row-major: ``np.ascontiguousarray`` of fc6's [7, 7, 512, 4096] filters as read, or of
    its [25088, 4096] matrix transposed, walks memory 16-400 KB apart (1-3 s here). Copied
    in tiles of the source's fastest axis by the output's last axis, reads and writes stay
    in cache (0.3-0.9 s). Any layout works; this one is fast."""
    array = np.asarray(array)
    out = np.empty(array.shape, dtype=dtype)
    axes = [a for a in range(array.ndim) if array.shape[a] > 1]
    last = array.ndim - 1
    fast = min(axes, key=lambda a: abs(array.strides[a])) if axes else last
    if array.flags.c_contiguous or out.size == 0 or fast == last:
        out[...] = array
        return out
    cols = block if array.shape[fast] >= block else 16
    for j in range(0, array.shape[last], cols):
        for i in range(0, array.shape[fast], block):
            tile = [slice(None)] * array.ndim
            tile[last], tile[fast] = slice(j, j + cols), slice(i, i + block)
            out[tuple(tile)] = array[tuple(tile)]
    return out


def _read_layer(cell, index):
    record = np.asarray(cell).reshape(-1)[0]
    where = f"layer {index}"
    name = _str(_field(record, "name", where))
    kind = _str(_field(record, "type", where))
    layer = MatLayer(name=name, type=kind)
    if kind == "conv":
        weights = np.asarray(_field(record, "weights", f"layer {index} ({name})")).reshape(-1)
        if weights.size != 2:
            raise WeightsFileError(f"layer {index} ({name}): 'weights' holds {weights.size} "
                                   f"arrays, expected 2 (filters and biases).")
        layer.weight = np.asarray(weights[0], dtype=np.float32)   # column-major, as read
        layer.bias = np.asarray(weights[1], dtype=np.float32).reshape(-1)
        if layer.weight.ndim == 2:   # a 1x1 conv with singleton spatial axes squeezed by MATLAB
            layer.weight = layer.weight.reshape(1, 1, *layer.weight.shape)
        layer.pad = _ints(record["pad"], (0, 0, 0, 0)) if "pad" in record.dtype.names else (0,) * 4
        layer.stride = _ints(record["stride"], (1, 1)) if "stride" in record.dtype.names else (1, 1)
    elif kind == "pool":
        layer.pool = _ints(_field(record, "pool", where), (2, 2))
        layer.stride = _ints(_field(record, "stride", where), (2, 2))
        layer.pad = _ints(record["pad"], (0, 0, 0, 0)) if "pad" in record.dtype.names else (0,) * 4
        method = _str(record["method"]) if "method" in record.dtype.names else "max"
        if method != "max":
            raise WeightsFileError(f"layer {index} ({name}) is '{method}' pooling; VGG19 uses max.")
    return layer


def _class_names(classes_struct):
    record = np.asarray(classes_struct).reshape(-1)[0]
    if record.dtype.names is None or "description" not in record.dtype.names:
        return []
    cells = np.asarray(record["description"]).reshape(-1)
    return [_str(c) for c in cells]


def _mean_pixel(average_image):
    avg = np.asarray(average_image, dtype=np.float64)
    if avg.size == 3:
        return avg.reshape(3)
    if avg.ndim == 3 and avg.shape[2] == 3:
        return avg.mean(axis=(0, 1))
    raise WeightsFileError(f"averageImage has shape {avg.shape}; expected (H, W, 3) or 3 values.")


def load_vgg19_mat(path):
    """Read ``path`` and return a :class:`VGGWeights`; checks that it is VGG19.

    The default path (``models/imagenet-vgg-verydeep-19.mat``) is looked for in the current
    folder, then in the repository. Every problem with the file, whatever SciPy raises on a
    damaged one, becomes a :class:`WeightsFileError` naming the file.
    """
    from labkit.runtime.cli import DEFAULT_WEIGHTS, find_default
    path = os.fspath(path)
    if os.path.normpath(path) == os.path.normpath(DEFAULT_WEIGHTS):
        path = find_default(path)
    if not os.path.lexists(path):
        raise WeightsFileError(missing_file_message(path))
    if os.path.isdir(path):
        raise WeightsFileError(f"{path} is a folder; pass the .mat file itself "
                               f"(e.g. {os.path.join(path, spec.REAL_FILE_NAME)}).")
    problem = input_problem(path)
    if problem and not problem.startswith("is empty"):
        raise WeightsFileError(f"weights file {path} {problem}.")
    size = os.path.getsize(path)
    if size == 0:
        raise WeightsFileError(f"{path} is empty (0 bytes): an interrupted download? Download "
                               f"it again; the legacy file's MD5 is {spec.LEGACY_MD5}.")
    try:
        check_mat5(path)        # a damaged file could crash SciPy's reader (segfault)
    except MatStructureError as exc:
        raise WeightsFileError(
            f"cannot read {path} ({size:,} bytes) as a MATLAB .mat file: {exc}. The file "
            f"is probably truncated or corrupt (an interrupted download?). Download it again; "
            f"the legacy file's MD5 is {spec.LEGACY_MD5}.") from None
    try:
        import scipy.io         # lazily: a driver that stops at a bad argument starts fast
        data = scipy.io.loadmat(path)
    except Exception as exc:    # SciPy raises many types on damaged files (MatReadError, ...)
        raise WeightsFileError(
            f"cannot read {path} ({size:,} bytes) as a MATLAB .mat file: "
            f"{type(exc).__name__}: {_short(exc)}. The file is probably truncated or corrupt "
            f"(an interrupted download?). Download it again; the legacy file's MD5 is "
            f"{spec.LEGACY_MD5}.") from None
    try:
        weights = _parse(path, data)
    except WeightsFileError as exc:
        if path in str(exc):
            raise
        raise WeightsFileError(f"{path}: {exc}") from None
    except Exception as exc:    # a damaged struct: fields of the wrong kind or size
        raise WeightsFileError(f"{path}: the network struct could not be read "
                               f"({type(exc).__name__}: {_short(exc)}); this is not a "
                               f"(complete) MatConvNet VGG19 file. Download it again.") from None
    validate_vgg19(weights)
    return weights


def _short(exc, limit=200):
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _parse(path, data):
    if "layers" not in data:
        keys = [k for k in data if not k.startswith("__")]
        raise WeightsFileError(f"{path} has no 'layers' variable (it has {keys}): it is not a "
                               f"MatConvNet network file. Use {spec.REAL_FILE_NAME}.")
    if "normalization" in data and "classes" in data:
        layout = "legacy"
        norm = np.asarray(data["normalization"]).reshape(-1)[0]
        classes = data["classes"]
    elif "meta" in data:
        layout = "meta"
        meta = np.asarray(data["meta"]).reshape(-1)[0]
        norm = np.asarray(_field(meta, "normalization", "meta")).reshape(-1)[0]
        classes = _field(meta, "classes", "meta")
    else:
        raise WeightsFileError(f"{path} has 'layers' but neither 'normalization'/'classes' "
                               f"(legacy layout) nor 'meta' (new layout).")
    cells = np.asarray(data["layers"]).reshape(-1)
    layers = [_read_layer(c, i) for i, c in enumerate(cells)]
    return VGGWeights(path=path, layout=layout, layers=layers,
                      mean_pixel=_mean_pixel(_field(norm, "averageImage", "normalization")),
                      class_names=_class_names(classes))


def validate_vgg19(weights):
    """Check names, types and the chaining of channel widths; raise WeightsFileError."""
    names = [layer.name for layer in weights.layers]
    if names != spec.FILE_LAYER_NAMES:
        first = next((i for i, (a, b) in enumerate(zip(names, spec.FILE_LAYER_NAMES)) if a != b),
                     min(len(names), len(spec.FILE_LAYER_NAMES)))
        raise WeightsFileError(
            f"{weights.path} is not VGG19: it has {len(names)} layers (VGG19 has 43) and layer "
            f"{first} is {names[first] if first < len(names) else 'missing'!r} where VGG19 has "
            f"{spec.FILE_LAYER_NAMES[first] if first < 43 else 'nothing'!r}. "
            f"Use {spec.REAL_FILE_NAME} (VGG16 and other nets share the format but not the layers).")
    cin = 3
    for layer, (_, kind, _) in zip(weights.layers, spec.FILE_LAYERS):
        if layer.type != kind:
            raise WeightsFileError(f"{weights.path}: layer {layer.name} has type '{layer.type}', expected '{kind}'.")
        if kind != "conv":
            continue
        w = layer.weight
        expected_k = spec.POOL5_SIZE if layer.name == "fc6" else (1 if layer.name[:2] == "fc" else 3)
        if w.ndim != 4 or w.shape[0] != expected_k or w.shape[1] != expected_k or w.shape[2] != cin:
            raise WeightsFileError(
                f"{weights.path}: layer {layer.name}: filters have shape {w.shape}, expected "
                f"[{expected_k}, {expected_k}, {cin}, Cout] ([K, K, Cin, Cout]).")
        if layer.bias.shape != (w.shape[3],):
            raise WeightsFileError(f"{weights.path}: layer {layer.name}: {layer.bias.size} biases for "
                                   f"{w.shape[3]} filters.")
        for what, values in (("filters", w), ("biases", layer.bias)):
            # a float64 sum is finite exactly when every value is (no big temporary)
            if not np.isfinite(values.sum(dtype=np.float64)):
                bad = int(values.size - np.count_nonzero(np.isfinite(values)))
                raise WeightsFileError(
                    f"{weights.path}: layer {layer.name}: {bad:,} of {values.size:,} {what} are "
                    f"NaN or infinite; the file is corrupt. Download it again (the legacy "
                    f"file's MD5 is {spec.LEGACY_MD5}).")
        cin = w.shape[3]
    if not np.all(np.isfinite(weights.mean_pixel)):
        raise WeightsFileError(f"{weights.path}: the mean pixel (averageImage) is "
                               f"{weights.mean_pixel}, not finite; the file is corrupt.")
    if weights.class_names and len(weights.class_names) != weights.num_classes:
        raise WeightsFileError(f"{weights.path}: {len(weights.class_names)} class names for "
                               f"{weights.num_classes} outputs of fc8.")
