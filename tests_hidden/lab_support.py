"""Hidden lab tests' support (staff only, never shipped): the full-size fixture and the
reference network it is compared with.

The original kit's student code hard-codes the real VGG19 widths (64 ... 512, 4096, 1000
classes), so the end-to-end lab tests use a full-size random VGG19 in the original file
layout (``imagenet-vgg-verydeep-19.mat``, about 550 MB) with a synthetic ``cat1.jpg``. The
files are made once and kept in ``$LABKIT_LAB_FIXTURES`` when set (batch grading: set it to
one folder for all submissions), else in pytest's temporary folder.

The reference forward uses labkit.engine's convolution (float32, img2col) and plain NumPy for
the rest; it is what the student's composition (build, load, image, flatten order, fc,
softmax) is compared with.
"""
import os
import tempfile

import numpy as np

from labkit.runtime import vgg19_spec as spec

FIXTURE_SEED = 19
FC8_GAIN = 4.0
MAT_NAME = "imagenet-vgg-verydeep-19.mat"
QUANT_NAME = "vgg19_quant_param_new.npz"
REF_NAME = "reference_cat1.npz"
IMAGE_NAME = "cat1.jpg"


def fixture_folder():
    """``$LABKIT_LAB_FIXTURES``, else one folder per machine in the temporary directory (the
    files are deterministic; every grading process reuses them)."""
    return os.environ.get("LABKIT_LAB_FIXTURES") or os.path.join(
        tempfile.gettempdir(), f"labkit-lab-fixtures-seed{FIXTURE_SEED}")


def deferred(build, *args):
    """``build(*args)``, or the exception it raised (e.g. NotImplementedError of an
    unfinished task): a module fixture hands it to the tests, which ``unwrap`` it."""
    try:
        return build(*args)
    except Exception as exc:
        return exc


def unwrap(result):
    """Re-raise a module fixture's exception inside the test (a failure, not a set-up
    error), so the grade says which task is missing."""
    if isinstance(result, BaseException):
        raise result
    return result


def _atomic(path, write):
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def reference_forward(weights, image):
    """The file's VGG19 on ``image`` (1, 3, 224, 224) float32 -> {layer name: output} for the
    43 file layers (fc layers flatten pool5 in H, W, C order, MatConvNet's)."""
    from labkit.engine.conv_algos import conv2d_img2col
    acts, x = {}, np.asarray(image, dtype=np.float32)
    for layer in weights.layers:
        if layer.type == "conv":
            acts[layer.name + ":in_maxabs"] = float(np.max(np.abs(x)))
            w = np.asarray(layer.weight, dtype=np.float32)
            b = np.asarray(layer.bias, dtype=np.float32).reshape(-1)
            if layer.name.startswith("fc"):
                flat = x.transpose(0, 2, 3, 1).reshape(1, -1) if x.ndim == 4 else x
                x = flat @ w.reshape(-1, w.shape[3]) + b
            else:
                x = conv2d_img2col(x, np.transpose(w, [2, 0, 1, 3]), b, 1, 1)
        elif layer.type == "relu":
            x = np.maximum(x, 0)
        elif layer.type == "pool":
            n, c, h, wd = x.shape
            x = x[:, :, :h // 2 * 2, :wd // 2 * 2].reshape(n, c, h // 2, 2, wd // 2, 2).max(
                axis=(3, 5))
        elif layer.type == "softmax":
            z = x.astype(np.float64)
            e = np.exp(z - z.max(axis=1, keepdims=True))
            x = e / e.sum(axis=1, keepdims=True)
        acts[layer.name] = x
    return acts


SUMS_NAME = "SHA256SUMS.json"


def _owned_folder(folder):
    """``folder`` made (mode 0711: the sandbox may open the shared files by name, not list
    them) or checked: a real folder of this user that no one else can write; else a fresh
    private folder (a folder someone else made first, e.g. another submission's code in a
    shared /tmp, is never used)."""
    import stat
    try:
        os.makedirs(folder, mode=0o711, exist_ok=True)
        st = os.lstat(folder)
        ok = (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and
              not st.st_mode & 0o022)
    except OSError:
        ok = False
    if not ok:
        folder = tempfile.mkdtemp(prefix=f"labkit-lab-fixtures-seed{FIXTURE_SEED}-")
    os.chmod(folder, 0o711)
    return folder


def _sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path, value):
    import json
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def _verify(folder, names):
    """Each file: this user's, one link, not writable by others, and the hash recorded when
    it was made (SHA256SUMS.json, written then). Raises RuntimeError."""
    import json
    import stat
    sums_path = os.path.join(folder, SUMS_NAME)
    try:
        with open(sums_path, encoding="utf-8") as f:
            sums = json.load(f)
    except (OSError, ValueError):
        sums = {}
    for name in names:
        path = os.path.join(folder, name)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise RuntimeError(f"hidden fixture {path} is not a private file of the grader; "
                               f"remove {folder} and grade again")
        if name not in sums:        # made before hashes were kept: recorded now (trusted folder)
            sums[name] = _sha256(path)
            _atomic(sums_path, lambda p: _write_json(p, sums))
        elif _sha256(path) != sums[name]:
            raise RuntimeError(f"hidden fixture {path} changed since it was made; remove "
                               f"{folder} and grade again")


def make_full_fixture(folder):
    """Write (once) the full-size .mat, cat1.jpg, the quant file and the reference outputs
    into ``folder`` (the grader's own: see _owned_folder; the reference outputs readable by
    the grader only), checked by hash before use; returns {'mat', 'image', 'quant', 'pool5',
    'prob', 'folder'}."""
    from labkit.runtime import pycnml_sim
    from labkit.runtime.calibrate import QUANT_LAYERS
    from labkit.runtime.fixtures import random_vgg19_params, write_vgg19_mat
    from labkit.runtime.images import load_rgb, make_demo_image, preprocess, save_rgb
    from labkit.runtime.matfile import load_vgg19_mat
    folder = _owned_folder(folder)
    mat, image = os.path.join(folder, MAT_NAME), os.path.join(folder, IMAGE_NAME)
    quant, ref = os.path.join(folder, QUANT_NAME), os.path.join(folder, REF_NAME)
    if not os.path.exists(image):
        _atomic(image, lambda p: save_rgb(make_demo_image(300, 400, seed=11), p))
    if not os.path.exists(mat):
        params = random_vgg19_params(width_div=1, num_classes=1000, seed=FIXTURE_SEED)
        w8, b8 = params["fc8"]       # logits spread ~10: a clear top-1 (margin >> INT8 noise)
        params["fc8"] = (w8 * np.float32(FC8_GAIN), b8)
        _atomic(mat, lambda p: write_vgg19_mat(p, layout="legacy", params=params))
        del params
    if not (os.path.exists(ref) and os.path.exists(quant)):
        weights = load_vgg19_mat(mat)
        x = preprocess(load_rgb(image), weights.mean_pixel, spec.IMAGE_SIZE, spec.IMAGE_SIZE,
                       np.float32)
        acts = reference_forward(weights, x)
        inputs = [pycnml_sim.calibrate(np.array([acts[n + ":in_maxabs"]])) for n in QUANT_LAYERS]
        filters = [pycnml_sim.calibrate(weights.layer(n).weight) for n in QUANT_LAYERS]
        _atomic(quant, lambda p: pycnml_sim.save_quant_npz(p, inputs, filters))
        _atomic(ref, lambda p: np.savez(p, pool5=acts["pool5"], prob=acts["prob"],
                                        image=x))
    os.chmod(ref, 0o600)            # the expected outputs: never readable by student code
    for path in (image, mat, quant):    # shared with the sandbox as they are (a hard link)
        os.chmod(path, 0o644)
    _verify(folder, [IMAGE_NAME, MAT_NAME, QUANT_NAME, REF_NAME])
    with np.load(ref) as data:
        out = {k: data[k] for k in data.files}
    out.update(mat=mat, image=image, quant=quant, folder=folder)
    return out


_WEIGHTS = {}


def file_weights(path):
    """The full-size fixture's weights (``load_vgg19_mat``), read once per grading: the file
    is the grader's, checked by hash when the fixture was made (make_full_fixture), and the
    loaded object is only read by the tests (never handed to student code)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _WEIGHTS:
        from labkit.runtime.matfile import load_vgg19_mat
        _WEIGHTS.clear()
        _WEIGHTS[key] = load_vgg19_mat(path)
    return _WEIGHTS[key]


def mse(a, b):
    return float(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


class RefReLU:
    """ReLU for the composition tests (the student's ReLU is graded on its own)."""

    def forward(self, x):
        self.input = x
        return np.maximum(x, 0)

    def backward(self, top_diff):
        return top_diff * (self.input > 0)


# ------------------------------------------------------------------------- exp 3.2's DLP net
_KIND = {"conv": "conv", "relu": "relu", "pool": "pool", "flatten": "flatten", "fc": "mlp",
         "softmax": "softmax"}
DLP_KINDS = [_KIND[next(p for p in _KIND if n.startswith(p))] for n in spec.LAB_LAYER_NAMES]


class DlpRecorder:
    """The grader's ``pycnml`` for the student's vgg19_demo.py (exp 3.2's lab tests).

    ``CnmlNet`` and ``QuantParam`` make the simulator's objects here, in the grader, and hand
    student code stand-ins whose methods run here (``to_student``). What a net computed is
    then read from the grader's own object: a submission that fakes its ``net`` attribute, a
    forward counter or the output (e.g. probabilities it kept from another test) is not
    credited, because the tests never ask the student's objects for them."""

    def __init__(self):
        from labkit.runtime import pycnml_sim
        self.sim = pycnml_sim
        self.net_methods = tuple(n for n in dir(pycnml_sim.CnmlNet) if not n.startswith("_"))
        self.nets = []

    def CnmlNet(self, *args, **kwargs):  # noqa: N802 (pycnml's names)
        from labkit.runtime.student import to_student
        net = self.sim.CnmlNet(*args, **kwargs)
        self.nets.append(net)
        return to_student(net, self.net_methods)

    def QuantParam(self, *args, **kwargs):  # noqa: N802
        from labkit.runtime.student import to_student
        return to_student(self.sim.QuantParam(*args, **kwargs), ())

    def backend_name(self):
        return self.sim.backend_name()

    def counts(self):
        return [net.forward_count for net in self.nets]

    def net_that_ran(self, before, call):
        """The grader's net whose forward() ran since ``before`` (``counts()``)."""
        ran = [net for i, net in enumerate(self.nets)
               if net.forward_count > (before[i] if i < len(before) else 0)]
        assert ran, (f"{call} ran no pycnml net: build it with pycnml.CnmlNet(...) (the module "
                     f"global 'pycnml' of vgg19_demo.py) and call its forward()")
        return ran[-1]


def install_dlp_recorder(module):
    """Make the student's vgg19_demo module (``stu.vgg19_demo.module``) use a DlpRecorder as
    its global ``pycnml``; returns (recorder, restore)."""
    from labkit.runtime.student import to_student
    recorder = DlpRecorder()
    saved = getattr(module, "pycnml", None)
    module.pycnml = to_student(recorder, ("CnmlNet", "QuantParam", "backend_name"))

    def restore():
        if saved is not None:
            module.pycnml = saved
    return recorder, restore


def check_dlp_net(net, weights, layout=True):
    """The grader's net holds VGG19's layers (LAB_LAYER_NAMES' kinds, in order) and the
    file's weights: each conv/mlp layer's INT8 values are those of the file's weights under
    the layer's own filter QuantParam, up to their order (the same count of each INT8 value:
    exact), and its biases those of the file; with ``layout`` (the classification test), each
    filter in exactly pycnml's layout, a wrong one named (a kh/kw swap changes the output too
    little for the correlation to see). ``layout=False`` (get_top5's protocol test):
    order-blind, so a layout bug costs its own row only."""
    kinds = [layer.kind for layer in net._layers]
    assert kinds == DLP_KINDS, (f"the pycnml net's layers are {kinds}, expected VGG19's "
                                f"{DLP_KINDS} (spec.LAB_LAYER_NAMES)")
    quantized = [layer for layer in net._layers if layer.quantized]
    names = [n for n in spec.LAB_LAYER_NAMES if n.startswith(("conv", "fc"))]
    for name, layer in zip(names, quantized):
        assert layer.w is not None, f"layer {name!r}: no parameters loaded"
        fq = layer.filter_quant
        ref = file_int8(weights, name, fq)       # the file's weights quantised, its shape
        got = np.asarray(layer.w).astype(np.int8, copy=False).ravel()
        exact = layout and got.size == ref.size and np.array_equal(got, dlp_layout(name, ref))
        if not exact:           # (exactly pycnml's layout: the same values, no count needed)
            assert np.array_equal(_value_counts(got), _value_counts(ref)), \
                f"layer {name!r}: the loaded weights are not the file's (under {fq})"
            if layout:
                check_dlp_layout(name, got, ref)
        want_bias = np.sort(np.asarray(weights.layer(name).bias, np.float32).ravel().astype(
            np.float16))
        assert np.array_equal(np.sort(layer.bias), want_bias), \
            f"layer {name!r}: the loaded biases are not the file's"


_FILE_INT8 = {}


def file_int8(weights, name, fq):
    """The file's weights of layer ``name`` quantised under ``fq`` (int8, the file's shape),
    computed once per (weights, layer, QuantParam): quantisation is element-wise, so every
    layout is a transposition of these integers."""
    from labkit.runtime.pycnml_sim import quantize
    key = (name, fq.position, fq.scale)
    if _FILE_INT8.get("weights") is not weights:        # another file: start over
        _FILE_INT8.clear()
        _FILE_INT8["weights"] = weights
    if key not in _FILE_INT8:
        w = np.asarray(weights.layer(name).weight, np.float32)
        _FILE_INT8[key] = quantize(w, fq.position, fq.scale).reshape(w.shape)
    return _FILE_INT8[key]


def _value_counts(ints):
    """How often each INT8 value occurs (an order-blind, exact comparison of two filters)."""
    return np.bincount(np.asarray(ints, np.int8).ravel(order="K").view(np.uint8),
                       minlength=256)


def dlp_layout(name, weight):
    """``weight`` (the file's array) flattened in the layout pycnml is given (the first of
    ``dlp_layouts``; only that one is made)."""
    from labkit.runtime.matfile import c_order
    w = np.asarray(weight)
    if name.startswith("conv"):
        return c_order(np.transpose(w, [3, 2, 0, 1]), w.dtype).ravel()
    # [Cout, H, W, Cin] is [H*W*Cin, Cout] transposed (C order): one copy, in tiles
    return c_order(np.transpose(w, [3, 0, 1, 2]), w.dtype).ravel()


def dlp_layouts(name, weight):
    """{description: ``weight`` as pycnml would be given it} for the layout the lab asks for
    (first) and the classic wrong ones (``weight``: the file's array, float or its INT8
    values). The file holds [K, K, Cin, Cout] (fc: [H, W, Cin, Cout]); pycnml's conv takes
    [Cout, Cin, K, K] (handout note 2), its MLP [Cout, H*W*Cin] (CnmlFlattenLayer flattens
    pool5 in H, W, C order)."""
    w = np.asarray(weight)
    if name.startswith("conv"):
        return {"[Cout, Cin, K, K]": np.transpose(w, [3, 2, 0, 1]),
                "[Cout, Cin, K, K] with kh and kw swapped": np.transpose(w, [3, 2, 1, 0]),
                "[Cin, Cout, K, K]": np.transpose(w, [2, 3, 0, 1]),
                "[Cout, K, K, Cin]": np.transpose(w, [3, 0, 1, 2]),
                "the file's [K, K, Cin, Cout] untransposed": w}
    return {"[Cout, H*W*Cin]": w.reshape(-1, w.shape[3]).T,
            "[Cout, Cin*H*W] (C, H, W order; pycnml's flatten is H, W, C)":
                np.transpose(w, [3, 2, 0, 1]).reshape(w.shape[3], -1),
            "[H*W*Cin, Cout] (not transposed)": w.reshape(-1, w.shape[3])}


def check_dlp_layout(name, got, ref):
    """``got`` (the layer's INT8 filter) in exactly pycnml's layout of ``ref`` (the file's
    weights quantised, in the file's shape); a wrong layout is named."""
    got = np.asarray(got).ravel()
    want_name = "[Cout, Cin, K, K]" if name.startswith("conv") else "[Cout, H*W*Cin]"
    want = dlp_layout(name, ref)
    if np.array_equal(got, want):
        return
    seen = next((d for d, f in dlp_layouts(name, ref).items() if f.size == got.size and
                 np.array_equal(got, f.ravel())), None)
    first = int(np.flatnonzero(got != want)[0])
    raise AssertionError(
        f"layer {name!r}: the filter given to loadParams is in the wrong layout"
        + (f": yours is {seen}" if seen else "") + f"; pycnml expects {want_name} (handout "
        f"note 2: the file holds [K, K, Cin, Cout]); first difference at flat index {first}: "
        f"yours {got[first]} vs expected {want[first]} (INT8)")


def net_ints(weight, fq):
    """The INT8 values the simulator stores for ``weight`` under QuantParam ``fq``."""
    from labkit.runtime.pycnml_sim import quantize
    return quantize(np.asarray(weight, np.float32).ravel(), fq.position, fq.scale).astype(
        np.int64)
