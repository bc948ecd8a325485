"""Write VGG19 ``.mat`` files with MatConvNet's exact struct layout and random weights.

Used by the tests (small widths) and the benchmarks/demo (``width_div=1`` gives the real
143,667,240-parameter size). Both layouts are written with their real field orders (see
``shared/reference/matconvnet_vgg19_format.md``): legacy like SciPy's ``savemat`` of
import-caffe.py (uncompressed), meta like MATLAB's save (compressed, integers as uint8).
The weights are He-initialised so activations neither vanish nor explode; the network is
random, so its "classes" mean nothing.
"""
import os

import numpy as np

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.cli import atomic_path

LEGACY_FIELDS = {
    "conv": ("weights", "pad", "type", "name", "stride"),
    "relu": ("type", "name"),
    "pool": ("name", "stride", "pad", "type", "method", "pool"),
    "softmax": ("type", "name"),
}
META_FIELDS = {
    "conv": ("name", "type", "weights", "size", "pad", "stride", "precious", "dilate", "opts"),
    "relu": ("name", "type", "leak", "weights", "precious"),
    "pool": ("name", "type", "method", "pool", "stride", "pad", "weights", "precious", "opts"),
    "softmax": ("name", "type", "weights", "precious"),
}
MEAN_PIXEL = (123.68, 116.779, 103.939)


def _struct(fields, values):
    """A MATLAB 1x1 struct with the given field order."""
    record = np.empty((1, 1), dtype=[(f, object) for f in fields])
    for f in fields:
        record[0, 0][f] = values[f]
    return record


def _cell(items):
    cell = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell[0, i] = item
    return cell


def random_vgg19_params(width_div=16, num_classes=10, fc_width=None, seed=0,
                        last_layer="fc8"):
    """{conv name: (W [K, K, Cin, Cout] float32, b [Cout] float32)} for the conv layers up to
    ``last_layer`` (all 19 by default; e.g. "conv5_4" skips fc6's 400 MB at full size)."""
    rng = np.random.default_rng(seed)
    params, cin = {}, 3
    last = spec.FILE_LAYER_NAMES.index(last_layer)
    for name, kind, cout in spec.FILE_LAYERS[:last + 1]:
        if kind != "conv":
            continue
        if name == "fc8":
            cout = num_classes
        elif name.startswith("fc"):
            cout = fc_width or max(cout // width_div, 1)
        else:
            cout = max(cout // width_div, 1)
        k = spec.POOL5_SIZE if name == "fc6" else (1 if name.startswith("fc") else 3)
        w = rng.standard_normal((k, k, cin, cout), dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / (k * k * cin)))
        if name == "fc8":       # keep the logits O(1) so the probabilities are not all 0/1
            w *= np.float32(0.01)
        b = (0.01 * rng.standard_normal(cout)).astype(np.float32)
        params[name] = (w, b)
        cin = cout
    return params


def random_vgg19_weights(width_div=1, num_classes=1000, seed=0, last_layer="fc8"):
    """The same random network as a ``labkit.runtime.matfile.VGGWeights`` in memory (no file), with
    the layers up to ``last_layer``; for benchmarks of the full-size network."""
    from labkit.runtime.matfile import MatLayer, VGGWeights
    params = random_vgg19_params(width_div, num_classes, seed=seed, last_layer=last_layer)
    layers = []
    for name, kind, _ in spec.FILE_LAYERS[:spec.FILE_LAYER_NAMES.index(last_layer) + 1]:
        layer = MatLayer(name=name, type=kind)
        if kind == "conv":
            layer.weight, layer.bias = params[name]
        layers.append(layer)
    classes = [f"random class {i}, fixture" for i in range(num_classes)] \
        if last_layer == "fc8" else []
    return VGGWeights(path="<memory>", layout="memory", layers=layers,
                      mean_pixel=np.array(MEAN_PIXEL), class_names=classes)


def write_demo_vgg19(folder, num_classes=1000):
    """The drivers' --demo network: widths / 8, legacy layout, seed 0; returns its path.

    The name says the class count (exp 3.1/3.2 use 1000, exp 3.3 10), so drivers never
    share a file with different contents; the file is written under a temporary name and
    renamed, so a concurrent run reads either the old complete file or the new one."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"demo_vgg19_random_width8_{num_classes}classes.mat")
    with atomic_path(path) as tmp:
        write_vgg19_mat(tmp, layout="legacy", width_div=8, num_classes=num_classes, seed=0)
    return path


def write_vgg19_mat(path, layout="legacy", width_div=16, num_classes=10, fc_width=None,
                    seed=0, params=None):
    """Write a VGG19 file in ``layout`` ("legacy" or "meta"); returns the params dict."""
    if layout not in ("legacy", "meta"):
        raise ValueError("layout must be 'legacy' or 'meta'")
    if params is None:
        params = random_vgg19_params(width_div, num_classes, fc_width, seed)
    num_classes = params["fc8"][0].shape[-1]
    meta = layout == "meta"
    u8 = (lambda v: np.array([v], dtype=np.uint8)) if meta else \
         (lambda v: np.array([v], dtype=np.float64))
    layers = []
    for name, kind, _ in spec.FILE_LAYERS:
        values = {"name": name, "type": kind, "precious": np.array([[0]], dtype=np.uint8),
                  "opts": np.empty((0, 0), dtype=object), "weights": np.empty((0, 0), dtype=object)}
        if kind == "conv":
            w, b = params[name]
            values["weights"] = _cell([w, b.reshape(-1, 1) if meta else b.reshape(1, -1)])
            values["pad"] = u8([0, 0, 0, 0] if name.startswith("fc") else [1, 1, 1, 1])
            values["stride"] = u8([1, 1])
            values["size"] = np.array([list(w.shape)], dtype=np.uint16 if max(w.shape) > 255
                                      else np.uint8)
            values["dilate"] = np.array([[1]], dtype=np.uint8)
        elif kind == "relu":
            values["leak"] = np.array([[0]], dtype=np.uint8)
        elif kind == "pool":
            values.update(method="max", pool=u8([2, 2]), stride=u8([2, 2]),
                          pad=u8([0, 1, 0, 1] if meta else [0, 0, 0, 0]))
        elif kind == "softmax":
            values["name"] = "prob"
        fields = (META_FIELDS if meta else LEGACY_FIELDS)[kind]
        layers.append(_struct(fields, values))
    descriptions = [f"random class {i}, fixture" for i in range(num_classes)]
    wnids = [f"n{i:08d}" for i in range(num_classes)]
    classes = _struct(("name", "description"),
                      {"name": _cell(wnids), "description": _cell(descriptions)})
    if meta:
        norm = _struct(("imageSize", "keepAspect", "averageImage", "border", "cropSize",
                        "interpolation"),
                       {"imageSize": np.array([[224, 224, 3, 10]], dtype=np.uint8),
                        "keepAspect": np.array([[1]], dtype=np.uint8),
                        "averageImage": np.array(MEAN_PIXEL).reshape(1, 1, 3),
                        "border": np.array([[32, 32]], dtype=np.uint8),
                        "cropSize": np.array([[0.875, 0.875]]),
                        "interpolation": "bilinear"})
        inputs = _struct(("name", "size"), {"name": "data",
                                            "size": np.array([[224, 224, 3, 10]], dtype=np.uint8)})
        top = {"layers": _cell(layers),
               "meta": _struct(("inputs", "classes", "normalization"),
                               {"inputs": inputs, "classes": classes, "normalization": norm})}
    else:
        avg = np.broadcast_to(np.array(MEAN_PIXEL), (224, 224, 3)).copy()
        norm = _struct(("averageImage", "keepAspect", "border", "imageSize", "interpolation"),
                       {"averageImage": avg, "keepAspect": np.array([[1.0]]),
                        "border": np.array([[0.0, 0.0]]),
                        "imageSize": np.array([[224.0, 224.0, 3.0]]),
                        "interpolation": "bilinear"})
        top = {"layers": _cell(layers), "classes": classes, "normalization": norm}
    import scipy.io             # lazily (start-up of the drivers and tests)
    scipy.io.savemat(path, top, do_compression=meta, oned_as="row")
    return params
