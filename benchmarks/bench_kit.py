"""The kit's benchmark: convolution algorithms, the lab speed test, VGG19 and style transfer.

    python benchmarks/bench_kit.py [--json output/bench_kit.json] [--quick] [--repeat 7]

Everything is float32, batch 1, with random full-size VGG19 weights built in memory (no
576 MB file needed). Prints tables and writes them as JSON:

1. the machine's limits, measured: peak multiply rate (a large square SGEMM on OpenBLAS's
   threads) and memory bandwidth (a large copy, one thread and the engine's threads);
2. per VGG19 conv layer at 224x224: forward and input-gradient time of the lab's img2col,
   the tuned img2col, Winograd F(2x2) and F(4x4), FFT and the "auto" choice, and what each
   executes (``labkit.engine.costs``): multiplies and bytes moved, and the auto method's
   time against its lower bound (the larger of compute at peak and bytes at bandwidth);
3. the lab's speed test (loops vs the lab's img2col) and its two ratios;
4. VGG19 classification forward at 224x224 (``--layers tuned``), steady state;
5. one style-transfer step (forward to relu5_1, the six losses, one backward pass to the
   image, Adam; the exp 3.3 driver's default path) at 192x320, 224x224 and 512x512, against
   the step's bounds: compute (the multiplies executed at peak), compulsory memory traffic,
   and the roofline of the engine's passes, with a per-stage table;
6. the peak memory of a 512x512 style-transfer run (a separate process, VmHWM);
7. PyTorch's step and classification times, if PyTorch happens to be installed (never
   required): our runs and PyTorch's alternate, same threads; medians and spread (min-max).

Times are medians of ``--repeat`` runs after a warm-up; the machine's speed drifts (a shared
VM), so compare ratios measured in the same run.
"""
import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_style_step import STYLE, full_size_weights          # noqa: E402
from labkit.runtime import vgg19_spec as spec                          # noqa: E402
from labkit.runtime.cli import atomic_path                             # noqa: E402
from labkit.engine.attach import EngineConvolution, tune               # noqa: E402
from labkit.engine.conv_engine import choose_method                   # noqa: E402
from labkit.engine import costs                                          # noqa: E402
from labkit.engine.perf import (engine_threads, reuse_large_allocations, run_split,  # noqa: E402
                                usable_cpus, worker_pool)
from stu_upload.layer_2 import ConvolutionalLayer              # noqa: E402

STYLE_LAYERS = list(STYLE)
CONTENT_LAYER = "relu4_2"
METHODS = ["lab", "img2col", "winograd", "winograd4", "fft", "auto"]


def settle_blas():
    """Wait until OpenBLAS's own threads, busy after a multi-threaded GEMM, stop spinning
    (they spin ~0.1 s before sleeping). Timing the engine's threads (labkit.engine.perf) right after
    a multi-threaded GEMM would otherwise charge it for that spin (measured: +15 % on a step)."""
    time.sleep(0.3)


@contextlib.contextmanager
def timed_as_run(tuned):
    """The block runs as the drivers run it: the tuned engine in its own threads (after
    ``settle_blas``), the lab's layers with OpenBLAS's threads."""
    if tuned:
        settle_blas()
    with engine_threads(tuned):
        yield


def median_time(fn, repeat, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def conv_shapes(height, width, last="conv5_4"):
    """[(name, Cin, Cout, H, W)] of VGG19's 3x3 convs up to ``last`` for an input image."""
    shapes, cin, h, w = [], 3, height, width
    for name, kind, cout in spec.FILE_LAYERS[:37]:
        if kind == "conv":
            shapes.append((name, cin, cout, h, w))
            cin = cout
        elif kind == "pool":
            h, w = h // 2, w // 2
        if name == last:
            break
    return shapes


def spread(times):
    """{'median', 'min', 'max'} of a list of seconds."""
    return {"median": float(np.median(times)), "min": float(min(times)),
            "max": float(max(times))}


# ------------------------------------------------------------------------- 1. machine limits
def peak_gflops(repeat, size=3072):
    """Best GFLOP/s of a size x size float32 SGEMM on OpenBLAS's threads (one per CPU)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / min(times) / 1e9, 2.0 * size ** 3 / float(np.median(times)) / 1e9


def copy_bandwidth(repeat, megabytes=256):
    """Best GB/s (bytes read + bytes written) of copying a large float32 array: one thread,
    and split over the engine's threads; returns {'one_thread', 'threads'}."""
    src = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    result = {}
    for label, threaded in (("one_thread", False), ("threads", True)):
        with engine_threads(threaded):
            from labkit.engine.perf import active_pool

            def copy():
                run_split(active_pool(), lambda lo, hi: np.copyto(dst[lo:hi], src[lo:hi]),
                          src.size)
            copy()
            best = float("inf")
            for _ in range(repeat):
                start = time.perf_counter()
                copy()
                best = min(best, time.perf_counter() - start)
        result[label] = 2.0 * src.nbytes / best / 1e9
    return result


def machine_limits(repeat):
    peak, median_rate = peak_gflops(repeat)
    bw = copy_bandwidth(repeat)
    return {"peak_gflops": peak, "sgemm_median_gflops": median_rate,
            "bandwidth_gbs": max(bw.values()), "bandwidth": bw}


# ------------------------------------------------------------------------- 2. conv layers
def layer_costs(method, cin, cout, h, w, limits):
    """What ``method`` executes on this layer (forward, input gradient): multiplies, bytes
    moved, and the lower bound in ms (compute at peak or compulsory bytes at bandwidth)."""
    fwd_m = choose_method(3, 1, cin, cout, h, w) if method == "auto" else method
    fwd = costs.conv_cost(fwd_m, cin, cout, h, w)
    if method in ("lab", "auto", "img2col") and cin * 9 <= cout:      # GEMM + col2im
        bwd_m, bwd = "img2col", costs.narrow_input_grad_cost(cin, cout, h, w)
    else:
        bwd_m = choose_method(3, 1, cout, cin, h, w) if method == "auto" else method
        bwd = costs.conv_cost(bwd_m, cout, cin, h, w)
    out = {}
    for label, c in (("forward", fwd), ("backward", bwd)):
        b = costs.bounds([(label, c)], limits["peak_gflops"], limits["bandwidth_gbs"])
        out.update({f"{label}_gmults": c["mults"] / 1e9, f"{label}_mbytes": c["bytes"] / 1e6,
                    f"{label}_limit_ms": b["limit_s"] * 1e3,
                    f"{label}_roofline_ms": b["roofline_s"] * 1e3})
    return out


def channels_last_view(a):
    """An (N, C, H, W) view of an (N, H, W, C) copy of ``a``: the tuned engine's layout."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def bench_layers(repeat, rng, quick, limits):
    rows, seen = [], {}
    for name, cin, cout, h, w in conv_shapes(224, 224):
        key = (cin, cout, h, w)
        if key in seen:
            rows.append(dict(seen[key], layer=name, same_as=seen[key]["layer"]))
            continue
        x = rng.standard_normal((1, cin, h, w), dtype=np.float32)
        weight = (rng.standard_normal((cin, 3, 3, cout), dtype=np.float32)
                  / np.float32(np.sqrt(9 * cin)))
        dy = rng.standard_normal((1, cout, h, w), dtype=np.float32)
        gflop = 2.0 * cin * cout * 9 * h * w / 1e9
        row = {"layer": name, "cin": cin, "cout": cout, "size": f"{h}x{w}", "gflop": gflop,
               "auto_forward": choose_method(3, 1, cin, cout, h, w),
               "auto_backward": choose_method(3, 1, cout, cin, h, w)}
        for method in METHODS:
            if quick and method == "fft":
                continue
            if method == "lab":
                layer = ConvolutionalLayer(3, cin, cout, 1, 1, type=1)
                layer.load_param(weight, np.zeros(cout, np.float32))
                layer.need_param_grad = False
            else:
                layer = EngineConvolution(3, cin, cout, 1, 1, weight, np.zeros(cout, np.float32),
                                          method, need_param_grad=False)
            # the engine's layers get their inputs in the layout the network hands them on
            # (channels-last views); the lab layer NCHW arrays
            xin, dyin = (x, dy) if method == "lab" else (channels_last_view(x),
                                                          channels_last_view(dy))
            with timed_as_run(method != "lab"):
                fwd = median_time(lambda: layer.forward(xin), repeat)
                bwd = median_time(lambda: layer.backward(dyin), repeat)
            row[method] = {"forward_ms": fwd * 1e3, "backward_ms": bwd * 1e3,
                           "forward_gflops": gflop / fwd, "backward_gflops": gflop / bwd,
                           **layer_costs(method, cin, cout, h, w, limits)}
        seen[key] = row
        rows.append(row)
    return rows


# ------------------------------------------------------------------------- 3. speed test
def bench_speed_test(quick):
    rng = np.random.default_rng(1234)
    x = rng.random((1, 256, 24, 40))
    dy = rng.random((1, 256, 24, 40))
    weight, bias = rng.random((256, 3, 3, 256)), rng.random(256)
    layers = {}
    for name, kind in (("raw", 0), ("img2col", 1)):
        layer = ConvolutionalLayer(3, 256, 256, 1, 1, type=kind)
        layer.load_param(weight, bias)
        layers[name] = layer
    layers["auto"] = EngineConvolution(3, 256, 256, 1, 1, weight, bias, "auto")
    result = {}
    for name, layer in layers.items():
        if name == "raw" and quick:
            continue
        start = time.perf_counter()
        y = layer.forward(x)
        fwd = time.perf_counter() - start
        start = time.perf_counter()
        dx = layer.backward(dy)
        bwd = time.perf_counter() - start
        if name != "raw":                                       # warm, then the median
            with timed_as_run(name == "auto"):
                fwd = median_time(lambda: layer.forward(x), 5)
                bwd = median_time(lambda: layer.backward(dy), 5)
        result[name] = {"forward_ms": fwd * 1e3, "backward_ms": bwd * 1e3, "y": y, "dx": dx}
    if "raw" in result:
        for name in ("img2col", "auto"):
            result[name]["forward_ratio"] = result["raw"]["forward_ms"] / result[name]["forward_ms"]
            result[name]["backward_ratio"] = (result["raw"]["backward_ms"]
                                              / result[name]["backward_ms"])
            result[name]["forward_mse"] = float(np.mean((result[name]["y"] - result["raw"]["y"]) ** 2))
            result[name]["backward_mse"] = float(np.mean((result[name]["dx"] - result["raw"]["dx"]) ** 2))
    for r in result.values():
        del r["y"], r["dx"]
    return result


# ------------------------------------------------------------------------- alternation
def alternate(ours, theirs, repeat, warmup=2):
    """Time ``ours`` and ``theirs`` (None: ours alone) in turn, ``repeat`` times each after
    ``warmup`` calls: {'ours': spread, 'theirs': spread, 'ratio': ours/theirs of the
    medians, 'pair_ratios': spread of the per-round ratios}. OpenBLAS's spinning threads
    are let settle before every timed call (``settle_blas``)."""
    fns = {"ours": ours} if theirs is None else {"ours": ours, "theirs": theirs}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            settle_blas()
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    out = {k: spread(v) for k, v in times.items()}
    if theirs is not None:
        out["ratio"] = out["ours"]["median"] / out["theirs"]["median"]
        out["pair_ratios"] = spread([a / b for a, b in zip(times["ours"], times["theirs"])])
    return out


def torch_or_none():
    """PyTorch with the same number of threads as the engine, or None (never required)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(usable_cpus())
    return torch


# ------------------------------------------------------------------------- 4. classification
def classification_costs(shapes):
    """[(part, cost)] of VGG19's classification forward: convs (auto, fused ReLU), pools,
    fc6-fc8 (matrix-vector products: each weight read once)."""
    parts = []
    for name, cin, cout, h, w in shapes:
        if name in ("conv2_1", "conv3_1", "conv4_1", "conv5_1"):
            parts.append((f"pool{int(name[4]) - 1}", costs.pool_cost(cin, 2 * h, 2 * w)))
        parts.append((name, costs.conv_cost(choose_method(3, 1, cin, cout, h, w), cin, cout,
                                            h, w, relu=True)))
    parts.append(("pool5", costs.pool_cost(512, 14, 14)))
    for name, k, n in (("fc6", 25088, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)):
        parts.append((name, {"mults": float(k * n), "bytes": 4.0 * (k * n + k + n),
                             "min_bytes": 4.0 * (k * n + k + n)}))
    return parts


def torch_classifier(torch, weights):
    """VGG19's classification forward in PyTorch with the same random weights, or None."""
    if torch is None:
        return None
    F = torch.nn.functional
    layers = []
    for name, kind, _ in spec.FILE_LAYERS:
        if kind == "conv" or name.startswith("fc"):
            layer = weights.layer(name)
            w = np.ascontiguousarray(np.transpose(layer.weight, (3, 2, 0, 1)), dtype=np.float32)
            b = torch.from_numpy(layer.bias.astype(np.float32).ravel())
            if name.startswith("fc"):        # as torchvision's VGG: nn.Linear, not a 7x7 conv
                layers.append(("fc", torch.from_numpy(w.reshape(w.shape[0], -1)), b))
            else:
                layers.append(("conv", torch.from_numpy(w), b))
        elif kind == "pool":
            layers.append(("pool", None, None))
        elif name.startswith("relu"):
            layers.append(("relu", None, None))
    image = torch.randn(1, 3, 224, 224) * 50

    def forward():
        with torch.inference_mode():
            x = image
            for kind, w, b in layers:
                if kind == "conv":
                    x = F.conv2d(x, w, b, padding=1)
                elif kind == "fc":
                    x = F.linear(x.reshape(1, -1), w, b)
                elif kind == "pool":
                    x = F.max_pool2d(x, 2)
                else:
                    x = torch.relu(x)
            return torch.softmax(x.reshape(1, -1), dim=1)
    return forward


def bench_classification(repeat, rng, limits, torch=None):
    from labkit.runtime.fixtures import random_vgg19_weights
    from stu_upload.vgg_cpu import VGG19 as ClassifierVGG
    weights = random_vgg19_weights(width_div=1, num_classes=1000, seed=0)
    image = rng.uniform(-120, 120, (1, 3, 224, 224)).astype(np.float32)
    parts = classification_costs(conv_shapes(224, 224))
    out = {"gflop": 2 * sum(c["mults"] for _, c in parts) / 1e9,
           **costs.bounds(parts, limits["peak_gflops"], limits["bandwidth_gbs"])}
    vggs = {}
    for label, method in (("lab_img2col", None), ("auto", "auto")):
        vgg = ClassifierVGG(None, type=1, dtype=np.float32, verbose=False)
        vgg.file = weights
        vgg.build_model()
        vgg.load_model()
        if method is not None:
            tune(vgg, method)
        vgg.input_image = image
        vggs[label] = vgg
    with timed_as_run(False):
        out["lab_img2col_s"] = median_time(vggs["lab_img2col"].forward, repeat)

    def ours():
        with engine_threads():          # as main_exp_3_1.py --layers tuned runs it
            vggs["auto"].forward()
    alt = alternate(ours, torch_classifier(torch, weights), repeat)
    out["auto_s"] = alt["ours"]["median"]
    out["alternated"] = alt
    out["ratio_limit"] = out["auto_s"] / out["limit_s"]
    out["ratio_roofline"] = out["auto_s"] / out["roofline_s"]
    if "theirs" in alt:
        out["torch"] = {"version": torch.__version__, "s": alt["theirs"]["median"],
                        "ratio": alt["ratio"], "pair_ratios": alt["pair_ratios"]}
    return out


# ------------------------------------------------------------------------- 5. style step
def build_style(height, width, method="auto"):
    from labkit.runtime.images import make_demo_image, preprocess
    from labkit.runtime.transfer import Objective
    from stu_upload.style_transfer import VGG19, get_random_img
    vgg = VGG19(None, dtype=np.float32, weights=full_size_weights())
    vgg.build_model(last_layer="relu5_1")
    vgg.load_model()
    run = (tune(vgg, method, need_param_grad=False, keep=[CONTENT_LAYER, *STYLE])
           if method != "lab" else None)
    mean = vgg.mean_pixel
    content = preprocess(make_demo_image(height, width, seed=0), mean, height, width, vgg.dtype)
    style = preprocess(make_demo_image(height, width, seed=7), mean, height, width, vgg.dtype)
    objective = Objective(vgg, content, style, CONTENT_LAYER, STYLE, 1.0, 500.0,   # as the driver
                          loss_layers=run.loss_layers if run else None)
    image = get_random_img(content, 0.5, np.random.default_rng(1234))
    return objective, image


def style_stage_times(objective, image):
    """{stage: seconds} of one step: each layer's forward/backward (the layers' own timers)
    and the rest (losses, Adam, glue)."""
    with engine_threads():
        start = time.perf_counter()
        objective(image)
        total = time.perf_counter() - start
    stages = {}
    for name, layer in objective.vgg.layers.items():
        for label, attr in (("fwd", "forward_time"), ("bwd", "backward_time")):
            t = getattr(layer, attr, 0.0)
            if t:
                stages[f"{name} {label}"] = t
    stages["losses, Adam and glue"] = total - sum(stages.values())
    return stages


def torch_style_step(torch, height, width):
    """The same step in PyTorch (random weights, same layers and losses), or None."""
    if torch is None:
        return None
    torch.manual_seed(0)
    convs = conv_shapes(height, width, last="conv5_1")
    weights = [torch.randn(cout, cin, 3, 3) * (2.0 / (9 * cin)) ** 0.5
               for _, cin, cout, _, _ in convs]
    names = [n for n, _, _ in spec.FILE_LAYERS[:spec.FILE_LAYER_NAMES.index("relu5_1") + 1]]

    def features(x):
        out, i = {}, 0
        for name in names:
            if name.startswith("conv"):
                x = torch.nn.functional.conv2d(x, weights[i], padding=1)
                i += 1
            elif name.startswith("relu"):
                x = torch.relu(x)
            else:
                x = torch.nn.functional.max_pool2d(x, 2)
            out[name] = x
        return out

    def gram(f):
        flat = f.reshape(f.shape[1], -1)
        return flat @ flat.T

    image = torch.randn(1, 3, height, width) * 50
    style = {n: gram(f).detach() for n, f in features(torch.randn(1, 3, height, width) * 50).items()
             if n in STYLE_LAYERS}
    content = features(torch.randn(1, 3, height, width) * 50)[CONTENT_LAYER].detach()
    image.requires_grad_(True)
    opt = torch.optim.Adam([image], lr=1.0)

    def step():
        opt.zero_grad()
        f = features(image)
        loss = ((f[CONTENT_LAYER] - content) ** 2).sum() / (2 * content.numel())
        for n in STYLE_LAYERS:
            c, hw = f[n].shape[1], f[n].shape[2] * f[n].shape[3]
            loss = loss + 100.0 * ((gram(f[n]) - style[n]) ** 2).sum() / (4 * c * c * hw * hw)
        loss.backward()
        opt.step()
    return step


def bench_style_step(height, width, repeat, limits, torch=None):
    from stu_upload.layer_3 import AdamOptimizer
    objective, image = build_style(height, width)
    adam = AdamOptimizer(1.0, image.shape)
    state = {"image": image}

    def step():       # as labkit.runtime.transfer.run_transfer runs it: in the engine's threads
        with engine_threads():
            _, grad, _ = objective(state["image"])
            state["image"] = adam.update(state["image"], grad)

    alt = alternate(step, torch_style_step(torch, height, width), repeat)
    parts = costs.style_step_costs(height, width, conv_shapes(height, width, last="conv5_1"),
                                   STYLE_LAYERS)
    b = costs.bounds(parts, limits["peak_gflops"], limits["bandwidth_gbs"])
    seconds = alt["ours"]["median"]
    out = {"size": f"{height}x{width}", "step_s": seconds, "step": alt["ours"],
           "gflop": 2 * b["mults"] / 1e9, "gbytes": b["bytes"] / 1e9, **b,
           "ratio_limit": seconds / b["limit_s"], "ratio_roofline": seconds / b["roofline_s"],
           "stages_s": style_stage_times(objective, state["image"])}
    if "theirs" in alt:
        out["torch"] = {"version": torch.__version__, "step_s": alt["theirs"]["median"],
                        "step": alt["theirs"], "ratio": alt["ratio"],
                        "pair_ratios": alt["pair_ratios"]}
    return out


# ------------------------------------------------------------------------- 6. peak memory
MEMORY_CHILD = """
import sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from labkit.engine.perf import reuse_large_allocations
reuse_large_allocations()
from bench_kit import build_style
from stu_upload.layer_3 import AdamOptimizer
objective, image = build_style({h}, {w})
objective.vgg.file = None      # as the driver: the file's arrays are freed after load_model
adam = AdamOptimizer(1.0, image.shape)
for _ in range({steps}):
    _, grad, _ = objective(image)
    image = adam.update(image, grad)
# VmHWM: this process's peak resident memory (ru_maxrss would include the parent's,
# inherited across fork/exec)
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def bench_peak_memory(height, width, steps=3):
    code = MEMORY_CHILD.format(root=ROOT, bench=os.path.join(ROOT, "benchmarks"),
                               h=height, w=width, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024      # VmHWM is in KiB


# ------------------------------------------------------------------------- main
def print_layers(rows):
    print("\nPer-layer convolution at 224x224: ms forward / ms input gradient")
    methods = [m for m in METHODS if m in rows[0]]
    print(f"{'layer':8s} {'shape':>17s} " + " ".join(f"{m:>13s}" for m in methods)
          + "  auto picks (fwd/bwd)")
    for row in rows:
        shape = f"{row['cin']}->{row['cout']} {row['size']}"
        cells = [f"{row[m]['forward_ms']:6.1f}/{row[m]['backward_ms']:6.1f}" for m in methods]
        print(f"{row['layer']:8s} {shape:>17s} " + " ".join(f"{c:>13s}" for c in cells)
              + f"  {row['auto_forward']}/{row['auto_backward']}")
    print("\nWhat each method executes, forward + input gradient: G multiply-adds / MB moved "
          "by its passes; auto: time against its bound (the larger of compute at peak and "
          "compulsory bytes at bandwidth) and its passes' roofline")
    print(f"{'layer':8s} " + " ".join(f"{m:>13s}" for m in methods)
          + "   auto ms  bound ms  roofline ms")
    for row in rows:
        if "same_as" in row:
            continue
        cells = [f"{row[m]['forward_gmults'] + row[m]['backward_gmults']:5.2f}/"
                 f"{row[m]['forward_mbytes'] + row[m]['backward_mbytes']:6.0f}" for m in methods]
        auto = row["auto"]
        t = auto["forward_ms"] + auto["backward_ms"]
        print(f"{row['layer']:8s} " + " ".join(f"{c:>13s}" for c in cells)
              + f"  {t:8.1f}  {auto['forward_limit_ms'] + auto['backward_limit_ms']:8.1f}"
              + f"  {auto['forward_roofline_ms'] + auto['backward_roofline_ms']:11.1f}")


def fmt_spread(sp, scale=1.0, unit="s", digits=3):
    return (f"{sp['median'] * scale:.{digits}f} {unit} ({sp['min'] * scale:.{digits}f}-"
            f"{sp['max'] * scale:.{digits}f})")


def fmt_torch(t, key):
    if not t:
        return ""
    return (f"; PyTorch {t['version']}: {t[key]:.3f} s -> ours/PyTorch {t['ratio']:.2f}x "
            f"(per round {t['pair_ratios']['min']:.2f}-{t['pair_ratios']['max']:.2f})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=os.path.join("output", "bench_kit.json"),
                   help="where to write the results")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per measurement")
    p.add_argument("--quick", action="store_true",
                   help="skip the raw loops, FFT, the per-layer table, 512x512 and the "
                        "memory run")
    p.add_argument("--only", choices=["steps"], help="steps: only the machine's limits, "
                   "classification, the style steps and the memory run")
    p.add_argument("--sizes", help="style-step sizes, e.g. 224x224,512x512 (default: "
                   "224x224, 192x320 and 512x512; --quick: 224x224)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")] \
            if args.sizes else [(224, 224)] + ([] if args.quick else [(192, 320), (512, 512)])
        if any(len(s) != 2 or min(s) < 32 for s in sizes):
            raise ValueError
    except ValueError:
        p.error(f"--sizes {args.sizes!r}: give HxW pairs of at least 32x32, e.g. 224x224,512x512")
    reuse_large_allocations()
    rng = np.random.default_rng(0)
    torch = torch_or_none()
    results = {"machine": {"python": platform.python_version(), "numpy": np.__version__,
                           "cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
                           "engine_threads": getattr(worker_pool(), "workers", 1),
                           "platform": platform.platform(), "processor": cpu_model(),
                           "torch": torch.__version__ if torch else None}}
    t0 = time.time()
    lim = results["limits"] = machine_limits(max(3, args.repeat // 2))
    print(f"Machine: {results['machine']['processor']}, {usable_cpus()} usable CPUs; peak "
          f"SGEMM {lim['peak_gflops']:.0f} GFLOP/s (3072^3, median {lim['sgemm_median_gflops']:.0f}),"
          f" copy bandwidth {lim['bandwidth_gbs']:.1f} GB/s (read + write; one thread "
          f"{lim['bandwidth']['one_thread']:.1f}, engine threads {lim['bandwidth']['threads']:.1f})")

    if not args.quick and not args.only:
        results["layers_224"] = rows = bench_layers(args.repeat, rng, args.quick, lim)
        print_layers(rows)

    if not args.only:
        st = results["speed_test"] = bench_speed_test(args.quick)
        print("\nLab speed test, ConvolutionalLayer(3, 256, 256, 1, 1) on (1, 256, 24, 40), "
              "float64")
        for name, r in st.items():
            extra = ""
            if "forward_ratio" in r:
                extra = (f"  FORWARD SPEEDUP {r['forward_ratio']:.0f}x, BACKWARD SPEEDUP "
                         f"{r['backward_ratio']:.0f}x (MSE {r['forward_mse']:.1e}/"
                         f"{r['backward_mse']:.1e})")
            print(f"  {name:8s} forward {r['forward_ms']:9.1f} ms  backward "
                  f"{r['backward_ms']:9.1f} ms" + extra)

    cl = results["classification_224"] = bench_classification(args.repeat, rng, lim, torch)
    print(f"\nVGG19 classification forward 224x224 ({cl['gflop']:.1f} GFLOP executed): lab "
          f"img2col {cl['lab_img2col_s']:.3f} s, tuned {fmt_spread(cl['alternated']['ours'])};"
          f" bound {cl['limit_s']:.3f} s -> {cl['ratio_limit']:.2f}x, roofline "
          f"{cl['roofline_s']:.3f} s -> {cl['ratio_roofline']:.2f}x" + fmt_torch(cl.get("torch"), "s"))

    results["style_step"] = []
    print("\nStyle-transfer step (forward to relu5_1, 6 losses, one backward, Adam; the exp 3.3 "
          "driver's default path), median (min-max):")
    for h, w in sizes:
        r = bench_style_step(h, w, args.repeat if h * w < 512 * 512 else max(3, args.repeat // 2),
                             lim, torch)
        results["style_step"].append(r)
        print(f"  {r['size']:>8s}: {fmt_spread(r['step'])}; executes {r['gflop']:.0f} GFLOP, "
              f"moves {r['gbytes']:.1f} GB; bound {r['limit_s']:.3f} s (compute "
              f"{r['compute_s']:.3f}, compulsory memory {r['min_memory_s']:.3f}) -> "
              f"{r['ratio_limit']:.2f}x; roofline of its passes {r['roofline_s']:.3f} s -> "
              f"{r['ratio_roofline']:.2f}x" + fmt_torch(r.get("torch"), "step_s"))
    big = results["style_step"][-1]
    stages = sorted(big["stages_s"].items(), key=lambda kv: -kv[1])
    print(f"  where a {big['size']} step goes (one step, ms): "
          + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in stages[:12]))
    if not args.quick:
        peak = results["peak_memory_512_bytes"] = bench_peak_memory(512, 512)
        print(f"\nPeak memory of a 512x512 style-transfer run (3 steps): {peak / 2**30:.2f} GiB")
    results["seconds"] = time.time() - t0
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with atomic_path(args.json, mode=0o666) as tmp, open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n{results['seconds']:.0f} s; results written to {args.json}")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
