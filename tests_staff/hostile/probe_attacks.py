"""Probe-answering submissions (issue 19, item 3): the reference solution with every
forward wrapped in a cache that answers any input within 1e-3 of the last one it computed
(same class, method and other arguments) with the stored result, and every backward
returning zeros of the right shape. A numeric gradient check that trusts its probes sees a
flat function (numeric gradient 0) and a zero analytic gradient: it passes with no backward.

``CONTROL`` is the same submission without the cache (zero backwards only): the points the
attack gains are ``points(ATTACK) - points(CONTROL)``; the grader must make that 0.
``submission(base, folder, cache)`` writes one (``base``: a stu_upload folder to copy).
"""
import os
import shutil

WRAP = '''
import numpy as _pa_np
_PA_CACHE_ON = {cache}
_PA_CACHE = {{}}


def _pa_key(a):
    if isinstance(a, _pa_np.ndarray):
        return ("arr", a.shape, str(a.dtype), hash(_pa_np.ascontiguousarray(a).tobytes()))
    if isinstance(a, (list, tuple)):
        return tuple(_pa_key(v) for v in a)
    if isinstance(a, dict):
        return tuple(sorted((k, _pa_key(v)) for k, v in a.items()))
    return repr(a)


def _pa_copy(y):
    if isinstance(y, dict):
        return {{k: _pa_copy(v) for k, v in y.items()}}
    return y.copy() if isinstance(y, _pa_np.ndarray) else y


def _pa_forward(cls, name):
    orig = cls.__dict__[name]

    def forward(self, x, *args, **kwargs):
        key = (cls.__name__, name, _pa_key(args), _pa_key(kwargs))
        xa = _pa_np.asarray(x, dtype=_pa_np.float64)
        hit = _PA_CACHE.get(key)
        if (_PA_CACHE_ON and hit is not None and hit[0].shape == xa.shape
                and float(_pa_np.max(_pa_np.abs(hit[0] - xa), initial=0.0)) < 1e-3):
            return _pa_copy(hit[1])                 # a probe: answered from the cache
        y = orig(self, x, *args, **kwargs)
        _PA_CACHE[key] = (xa.copy(), _pa_copy(y))
        return y
    setattr(cls, name, forward)


def _pa_backward(cls, name):
    orig = cls.__dict__[name]

    def backward(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)           # keeps shapes, dtypes and checks
        return _pa_np.zeros_like(out)               # ... and no gradient at all
    setattr(cls, name, backward)


for _pa_cls, _pa_fwd, _pa_bwd in {classes}:
    _pa_cls = globals()[_pa_cls]
    for _pa_n in _pa_fwd:
        _pa_forward(_pa_cls, _pa_n)
    for _pa_n in _pa_bwd:
        _pa_backward(_pa_cls, _pa_n)
'''

CLASSES = {
    "layer_1.py": [("FullyConnectedLayer", ["forward"], ["backward"]),
                   ("ReLULayer", ["forward"], ["backward"])],
    "layer_2.py": [("ConvolutionalLayer", ["forward_raw", "forward_speedup"],
                    ["backward_raw", "backward_speedup"]),
                   ("MaxPoolingLayer", ["forward_raw", "forward_speedup"],
                    ["backward_raw_book", "backward_speedup"])],
    "layer_3.py": [("ContentLossLayer", ["forward"], ["backward"]),
                   ("StyleLossLayer", ["forward"], ["backward"])],
    "style_transfer.py": [("VGG19", ["forward"], ["backward"])],
}


def code(file, cache):
    """The code appended to ``stu_upload/<file>``."""
    return WRAP.format(cache=bool(cache), classes=repr(CLASSES[file]))


def submission(base, folder, cache):
    """Copy the stu_upload folder ``base`` to ``folder/stu_upload`` with the wrappers
    appended (``cache=False``: the control, zero backwards only); returns its path."""
    dest = os.path.join(folder, "stu_upload")
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for file in CLASSES:
        with open(os.path.join(dest, file), "a", encoding="utf-8") as f:
            f.write("\n" + code(file, cache))
    return dest
