"""Course staff: record the public tests' expected values from the reference solution.

    python -m labkit.staff.record                 # (re)write tests/data/*.npz
    python -m labkit.staff.record --check         # exit 1 if the files are out of date

The public tests (``tests/test_layer_*.py``) read inputs and expected outputs from
``tests/data/<module>.npz`` (``labkit.runtime.recorded``) instead of computing them with
reference code, so the student kit holds no working answer. Each case is computed here with
the reference ``stu_upload`` of this repository, in float64, from fixed seeds; the kit
generator writes the files into every kit it builds. ``tests_staff/test_recorded.py``
checks the recorded values against independent definitions (the answer key is checked too).
"""
import argparse
import os
import sys
import tempfile

import numpy as np

from labkit.staff._stu_site.sitecustomize import install

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_DIR = os.path.join(ROOT, "tests", "data")

# (N, Cin, H, W, Cout, K, pad, stride): square and non-square, odd sizes, stride > 1,
# stride > kernel, padding larger than 1, 1x1 kernels, a floor-rule case that drops pixels.
CONV_CASES = [
    (1, 2, 5, 5, 3, 3, 1, 1),
    (2, 3, 6, 7, 2, 3, 0, 1),
    (2, 2, 7, 9, 3, 3, 1, 2),
    (1, 3, 8, 6, 2, 5, 2, 3),
    (3, 4, 4, 5, 2, 1, 0, 1),
    (1, 1, 9, 7, 2, 2, 0, 3),
    (2, 2, 6, 6, 1, 4, 1, 2),
]
# (K, stride, input shape): disjoint, floor rule, overlapping, stride 1, stride > K, 1x1
POOL_CASES = [(2, 2, (2, 3, 6, 8)), (2, 2, (1, 2, 7, 5)), (3, 2, (2, 2, 7, 9)),
              (3, 1, (1, 2, 5, 6)), (2, 3, (1, 1, 8, 7)), (1, 1, (1, 2, 3, 3))]
IMG2COL_CASES = [(3, 1), (3, 2), (2, 3), (1, 1)]


def conv_case_id(case):
    n, cin, h, w, cout, k, pad, stride = case
    return f"N{n}_C{cin}-{cout}_{h}x{w}_K{k}_p{pad}_s{stride}"


def pool_case_id(k, s, shape):
    return f"K{k}_s{s}_" + "x".join(str(v) for v in shape)


def _reference(root):
    """The reference solution's modules (this repository's stu_upload)."""
    import importlib
    install(os.path.join(root, "stu_upload"))
    return {m: importlib.import_module(f"stu_upload.{m}")
            for m in ("layer_1", "layer_2", "layer_3", "vgg_cpu", "style_transfer")}


def _put(out, case, **fields):
    for name, value in fields.items():
        out[f"{case}/{name}"] = np.asarray(value)


def record_layer_1(ref, rng):
    l1, out = ref["layer_1"], {}
    for batch in (1, 3, 4):
        fc = l1.FullyConnectedLayer(7, 5)
        w, b = rng.standard_normal((7, 5)), rng.standard_normal((1, 5))
        fc.load_param(w.copy(), b.copy())
        x, dy = rng.standard_normal((batch, 7)), rng.standard_normal((batch, 5))
        y = fc.forward(x)
        dx = fc.backward(dy)
        _put(out, f"fc/batch{batch}", x=x, w=w, b=b, dy=dy, y=y, dx=dx, dw=fc.d_weight,
             db=fc.d_bias)
    relu = l1.ReLULayer()
    x = rng.standard_normal((3, 4, 5))
    x[0, 0, :2] = 0.0                                   # exactly 0: either subgradient
    dy = rng.standard_normal(x.shape)
    y = relu.forward(x)
    _put(out, "relu/0", x=x, dy=dy, y=y, dx=relu.backward(dy))
    for name, x, label in (("softmax/0", rng.standard_normal((4, 6)) * 3, [0, 5, 2, 2]),
                           ("softmax/1", rng.standard_normal((1, 10)), [7]),
                           ("softmax/big", np.array([[1000.0, 999.0, -1000.0]]), [0])):
        sm = l1.SoftmaxLossLayer()
        prob = sm.forward(x)
        label = np.array(label)
        loss = sm.get_loss(label)
        _put(out, name, x=x, label=label, prob=prob, loss=loss, dx=sm.backward())
    return out


def record_layer_2(ref, rng):
    l2, out = ref["layer_2"], {}
    for case in CONV_CASES:
        n, cin, h, w, cout, k, pad, stride = case
        layer = l2.ConvolutionalLayer(k, cin, cout, pad, stride, type=0)
        weight, bias = rng.standard_normal((cin, k, k, cout)), rng.standard_normal(cout)
        layer.load_param(weight.copy(), bias.copy())
        x = rng.standard_normal((n, cin, h, w))
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape)
        dx = layer.backward(dy)
        _put(out, f"conv/{conv_case_id(case)}", x=x, w=weight, b=bias, pad=pad, stride=stride,
             dy=dy, y=y, dx=dx, dw=layer.d_weight, db=layer.d_bias)
    for k, s, shape in POOL_CASES:
        x = rng.standard_normal(shape)
        x[..., 0, 1] = x[..., 0, 0]                 # a tie: the first maximum takes it
        layer = l2.MaxPoolingLayer(k, s, type=0)
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape)
        _put(out, f"pool/{pool_case_id(k, s, shape)}", x=x, k=k, s=s, dy=dy, y=y,
             dx=layer.backward(dy))
    for k, s in IMG2COL_CASES:
        x = rng.standard_normal((2, 3, 7, 6))
        cols = l2.img2col(x, k, s)
        c = rng.standard_normal(cols.shape)
        _put(out, f"img2col/K{k}_s{s}", x=x, k=k, s=s, cols=cols, c=c,
             dx=l2.col2im(c, x.shape, k, s))
    return out


def record_layer_3(ref, rng):
    l3, out = ref["layer_3"], {}
    for i, shape in enumerate([(2, 3, 4, 5), (1, 4, 3, 3)]):
        x, y = rng.standard_normal(shape), rng.standard_normal(shape)
        content = l3.ContentLossLayer()
        _put(out, f"content/{i}", x=x, y=y, loss=content.forward(x, y),
             grad=content.backward(x, y))
        style = l3.StyleLossLayer()
        loss = style.forward(x, y)
        _put(out, f"style/{i}", x=x, y=y, loss=loss, grad=style.backward(x, y),
             gram=l3.gram_matrix(x))
    x = np.array([1.0, -2.0, 0.5, 0.0])
    grads = rng.standard_normal((4, 4)) * np.array([1.0, 0.1, 10.0, 1.0])
    adam = l3.AdamOptimizer(0.01, x.shape)
    steps, current = [], x
    for g in grads:
        current = adam.update(current, g)
        steps.append(current)
    _put(out, "adam/0", x=x, lr=0.01, grads=grads, steps=np.array(steps))
    return out


# exp 3.2's public fixture (tests/test_vgg19_demo.py): VGG19 widths / 16, 10 classes, seed
# 0; calibrated on 3 synthetic images (seed 100); two test images (seeds 10, 11)
DLP_FIXTURE = {"width_div": 16, "num_classes": 10, "seed": 0, "calib": (3, 100),
               "images": [(200, 260, 10), (300, 240, 11)]}


def dlp_fixture_files(folder):
    """Write exp 3.2's fixture weights and test images into ``folder``: (weights, [images])."""
    from labkit.runtime.fixtures import write_vgg19_mat
    from labkit.runtime.images import make_demo_image, save_rgb
    weights = os.path.join(folder, "w.mat")
    write_vgg19_mat(weights, "legacy", width_div=DLP_FIXTURE["width_div"],
                    num_classes=DLP_FIXTURE["num_classes"], seed=DLP_FIXTURE["seed"])
    images = []
    for i, (h, w, seed) in enumerate(DLP_FIXTURE["images"]):
        images.append(os.path.join(folder, f"test{i}.png"))
        save_rgb(make_demo_image(h, w, seed=seed), images[-1])
    return weights, images


def record_vgg19_demo(ref, rng):
    """Exp 3.2's public tests without exp 3.1's student code: the quantisation parameters
    (max-abs calibration of the reference float64 CPU network) and the reference CPU
    probabilities of the two test images."""
    from labkit.runtime import pycnml_sim
    from labkit.runtime.calibrate import QUANT_LAYERS, demo_images
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        weights, images = dlp_fixture_files(folder)
        cpu = ref["vgg_cpu"].VGG19(weights, type=1, dtype=np.float64, verbose=False)
        cpu.build_model()
        cpu.load_model()
        count, seed = DLP_FIXTURE["calib"]
        input_max = dict.fromkeys(QUANT_LAYERS, 0.0)
        for path in demo_images(os.path.join(folder, "calib"), count, seed=seed):
            x = cpu.load_image(path).astype(np.float64)
            for name in cpu.param_layer_name:
                if name in input_max:
                    input_max[name] = max(input_max[name], float(np.max(np.abs(x))))
                x = cpu.layers[name].forward(x)
        filter_max = {layer.name: float(np.max(np.abs(layer.weight)))
                      for layer in cpu.file.layers if layer.name in QUANT_LAYERS}
        _put(out, "quant/0",
             input=[pycnml_sim.calibrate(input_max[n]) for n in QUANT_LAYERS],
             filter=[pycnml_sim.calibrate(filter_max[n]) for n in QUANT_LAYERS])
        probs = []
        for path in images:
            cpu.load_image(path)
            probs.append(np.asarray(cpu.forward(), dtype=np.float64).reshape(-1))
        _put(out, "cpu/0", prob=np.array(probs))
    return out


# the tiny VGG19 of the public tests (tests/conftest.py's ``tiny_mat``)
TINY_MAT = dict(layout="legacy", width_div=32, num_classes=10, fc_width=32, seed=5)
FEATURES = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
STYLE = {"relu1_1": 1, "relu2_1": 1, "relu3_1": 1, "relu4_1": 1, "relu5_1": 1}


def record_style_transfer(ref, rng):
    """The tiny VGG19's forward values at fixed inputs, so the network tests
    (tests/test_style_transfer.py) check a forward value before they credit a gradient: its
    features (an 8x8 and a 32x48 input) and the Gatys objective's losses (16x16)."""
    from labkit.runtime.fixtures import write_vgg19_mat
    from labkit.runtime.images import make_demo_image, preprocess
    from labkit.runtime.transfer import Objective
    st, out = ref["style_transfer"], {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vgg19_tiny.mat")
        write_vgg19_mat(path, **TINY_MAT)
        vgg = st.VGG19(path, dtype=np.float64)
        vgg.build_model()
        vgg.init_model()
        vgg.load_model()
    x = rng.standard_normal((1, 3, 8, 8)) * 2.0
    _put(out, "network/8x8", x=x, relu2_1=vgg.forward(x, ["relu2_1"])["relu2_1"])
    x = rng.standard_normal((1, 3, 32, 48)) * 50.0
    feats = vgg.forward(x, FEATURES)
    _put(out, "network/32x48", x=x, **{n: feats[n] for n in FEATURES})
    mean = vgg.mean_pixel
    content = preprocess(make_demo_image(16, 16, seed=0), mean, 16, 16, np.float64)
    style = preprocess(make_demo_image(16, 16, seed=7)[:, ::-1], mean, 16, 16, np.float64)
    obj = Objective(vgg, content, style, "relu4_2", STYLE, alpha=1, beta=500, tv_weight=2.0)
    image = content * 0.5 + rng.uniform(-20, 20, content.shape) * 0.5
    total, _, parts = obj(image)
    _put(out, "objective/16x16", image=image, total=total, content=parts["content"],
         style=parts["style"], tv=parts["tv"])
    return out


RECORDERS = {"layer_1": (record_layer_1, 101), "layer_2": (record_layer_2, 102),
             "layer_3": (record_layer_3, 103), "vgg19_demo": (record_vgg19_demo, 104),
             "style_transfer": (record_style_transfer, 105)}


def record_all(root=ROOT):
    """{module: {key: array}} computed with the reference in ``root``."""
    ref = _reference(root)
    return {name: fn(ref, np.random.default_rng(seed))
            for name, (fn, seed) in RECORDERS.items()}


def write_all(folder, root=ROOT):
    """Write ``<folder>/<module>.npz`` atomically; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, arrays in record_all(root).items():
        path = os.path.join(folder, f"{name}.npz")
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        paths.append(path)
    return paths


def stale(folder=DATA_DIR, root=ROOT, rtol=1e-12):
    """[problem]: cases missing, extra or different (relative 1e-12) from a fresh recording."""
    problems = []
    for name, arrays in record_all(root).items():
        path = os.path.join(folder, f"{name}.npz")
        if not os.path.exists(path):
            problems.append(f"{path} is missing")
            continue
        with np.load(path, allow_pickle=False) as data:
            have = {k: data[k] for k in data.files}
        for key in sorted(set(arrays) ^ set(have)):
            problems.append(f"{name}: case field {key} {'missing' if key in arrays else 'extra'}")
        for key in sorted(set(arrays) & set(have)):
            a, b = np.asarray(arrays[key]), have[key]
            if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=0):
                problems.append(f"{name}: {key} differs from the reference")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description="Record the public tests' expected values "
                                "from the reference solution (tests/data/*.npz).")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    p.add_argument("--out", default=DATA_DIR, help="folder to write (default tests/data)")
    args = p.parse_args(argv)
    if args.check:
        problems = stale(args.out)
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    for path in write_all(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
