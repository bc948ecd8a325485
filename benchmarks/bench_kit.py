"""The kit's benchmark: convolution algorithms, the lab speed test, VGG19 and style transfer.

    python benchmarks/bench_kit.py [--json output/bench_kit.json] [--quick] [--repeat 5]

Everything is float32, batch 1, on this machine's BLAS threads, with random full-size VGG19
weights built in memory (no 576 MB file needed). Prints tables and writes them as JSON:

1. the machine's matrix-multiply rate, measured on the img2col GEMMs of each workload;
2. per VGG19 conv layer at 224x224: forward and input-gradient time and GFLOP/s of the
   lab's img2col, the tuned img2col, Winograd F(2x2) and F(4x4), FFT, and the "auto" choice;
3. the lab's speed test (loops vs the lab's img2col) and its two ratios;
4. VGG19 classification forward at 224x224, steady state (filter transforms cached);
5. one style-transfer step (forward to relu5_1, the six losses, one backward pass to the
   image, Adam) at 192x320, 224x224 and 512x512, against its GEMM-limit time: the step's
   FLOPs at the matrix-multiply rate measured on that step's own img2col GEMM shapes
   (steps and GEMM passes alternate, so that speed drift affects both alike);
6. the peak memory of a 512x512 style-transfer run (a separate process);
7. PyTorch's time for the same step, if PyTorch happens to be installed (never required).

Times are medians of ``--repeat`` runs after a warm-up; this machine is a VM whose speed
drifts by 10-30 %, so compare ratios measured in the same run.
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
from labkit.engine.attach import EngineConvolution, tune               # noqa: E402
from labkit.engine.conv_engine import choose_method                   # noqa: E402
from labkit.engine.perf import engine_threads, reuse_large_allocations  # noqa: E402
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


def gemm_operands(shapes, rng):
    """{(M, K, N): (A, B)}: the distinct img2col GEMMs of these convolutions (forward
    (Cout, Cin*9) @ (Cin*9, H*W) and input gradient (Cin, Cout*9) @ (Cout*9, H*W)), and
    how often each occurs."""
    operands, counts = {}, {}
    for _, cin, cout, h, w in shapes:
        for m, k in ((cout, cin * 9), (cin, cout * 9)):
            key = (m, k, h * w)
            counts[key] = counts.get(key, 0) + 1
            if key not in operands:
                operands[key] = (rng.standard_normal((m, k), dtype=np.float32),
                                 rng.standard_normal((k, h * w), dtype=np.float32))
    return operands, counts


def gemm_pass(operands):
    """Time each distinct GEMM once: {(M, K, N): seconds}."""
    times = {}
    for key, (a, b) in operands.items():
        start = time.perf_counter()
        a @ b
        times[key] = time.perf_counter() - start
    return times


def gemm_summary(samples, counts):
    """(aggregate, peak) GFLOP/s from repeated gemm_pass samples (median per shape):
    aggregate = total FLOPs / total time (what a plain-GEMM implementation of the
    workload gets), peak = the best single shape."""
    flops = seconds = peak = 0.0
    for key, count in counts.items():
        m, k, n = key
        t = float(np.median([s[key] for s in samples]))
        flops += 2.0 * m * k * n * count
        seconds += t * count
        peak = max(peak, 2.0 * m * k * n / t / 1e9)
    return flops / seconds / 1e9, peak


def gemm_rate(shapes, repeat, rng):
    """(aggregate, peak) GFLOP/s of the img2col GEMMs of these convolutions."""
    operands, counts = gemm_operands(shapes, rng)
    gemm_pass(operands)                                             # warm-up
    return gemm_summary([gemm_pass(operands) for _ in range(repeat)], counts)


def step_flops(height, width):
    """FLOPs of one style-transfer step: convs to relu5_1 forward and backward (input
    gradient only) and the Gram matrices and their gradients of the style layers."""
    convs = conv_shapes(height, width, last="conv5_1")
    conv = sum(2.0 * cin * cout * 9 * h * w for _, cin, cout, h, w in convs) * 2
    sizes = {name.replace("conv", "relu"): (cout, h * w) for name, _, cout, h, w in convs}
    gram = sum(2 * 2.0 * sizes[n][0] ** 2 * sizes[n][1] for n in STYLE_LAYERS)
    return conv + gram


# ------------------------------------------------------------------------- 2. conv layers
def bench_layers(repeat, rng, quick):
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
            with timed_as_run(method != "lab"):
                fwd = median_time(lambda: layer.forward(x), repeat)
                bwd = median_time(lambda: layer.backward(dy), repeat)
            row[method] = {"forward_ms": fwd * 1e3, "backward_ms": bwd * 1e3,
                           "forward_gflops": gflop / fwd, "backward_gflops": gflop / bwd}
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


# ------------------------------------------------------------------------- 4. classification
def bench_classification(repeat, rng):
    from labkit.runtime.fixtures import random_vgg19_weights
    from stu_upload.vgg_cpu import VGG19 as ClassifierVGG
    weights = random_vgg19_weights(width_div=1, num_classes=1000, seed=0)
    image = rng.uniform(-120, 120, (1, 3, 224, 224)).astype(np.float32)
    shapes = conv_shapes(224, 224)
    conv_gflop = sum(2.0 * cin * cout * 9 * h * w for _, cin, cout, h, w in shapes) / 1e9
    fc_gflop = 2.0 * (25088 * 4096 + 4096 * 4096 + 4096 * 1000) / 1e9
    out = {"gflop": conv_gflop + fc_gflop}
    for label, method in (("lab_img2col", None), ("auto", "auto")):
        vgg = ClassifierVGG(None, type=1, dtype=np.float32, verbose=False)
        vgg.file = weights
        vgg.build_model()
        vgg.load_model()
        if method is not None:
            tune(vgg, method)
        vgg.input_image = image
        with timed_as_run(method is not None):     # as main_exp_3_1.py runs it
            out[f"{label}_s"] = median_time(vgg.forward, repeat)
    # the forward GEMMs only (classification has no backward)
    a_flops = a_secs = 0.0
    for _, cin, cout, h, w in shapes:
        a = rng.standard_normal((cout, cin * 9), dtype=np.float32)
        b = rng.standard_normal((cin * 9, h * w), dtype=np.float32)
        a_secs += median_time(lambda: a @ b, repeat)
        a_flops += 2.0 * cout * cin * 9 * h * w
    fc = rng.standard_normal((1, 25088), dtype=np.float32)
    fcw = weights.layer("fc6").weight.reshape(-1, 4096)
    a_secs += median_time(lambda: fc @ fcw, repeat) * (fc_gflop * 1e9 / (2.0 * 25088 * 4096))
    a_flops += fc_gflop * 1e9
    out["gemm_gflops"] = a_flops / a_secs / 1e9
    out["gemm_limit_s"] = out["gflop"] / out["gemm_gflops"]
    out["ratio_auto"] = out["auto_s"] / out["gemm_limit_s"]
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
    objective = Objective(vgg, content, style, CONTENT_LAYER, STYLE, 1.0, 500.0,
                          parallel_map=run.parallel_map if run else None)
    image = get_random_img(content, 0.5, np.random.default_rng(1234))
    return objective, image


def bench_style_step(height, width, repeat, rng):
    from stu_upload.layer_3 import AdamOptimizer
    objective, image = build_style(height, width)
    adam = AdamOptimizer(1.0, image.shape)
    state = {"image": image}

    def step():       # as labkit.runtime.transfer.run_transfer runs it: in the engine's threads
        with engine_threads():
            _, grad, _ = objective(state["image"])
            state["image"] = adam.update(state["image"], grad)

    # steps and GEMMs alternate, so that the VM's speed drift affects both alike
    operands, counts = gemm_operands(conv_shapes(height, width, last="conv5_1"), rng)
    step()
    step()
    gemm_pass(operands)
    step_times, samples = [], []
    for _ in range(max(3, repeat)):
        settle_blas()
        start = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - start)
        samples.append(gemm_pass(operands))
    seconds = float(np.median(step_times))
    rate, peak = gemm_summary(samples, counts)
    gflop = step_flops(height, width) / 1e9
    limit = gflop / rate
    return {"size": f"{height}x{width}", "step_s": seconds, "gflop": gflop,
            "gemm_gflops": rate, "gemm_limit_s": limit, "ratio": seconds / limit,
            "gemm_peak_gflops": peak, "ratio_at_peak": seconds / (gflop / peak)}


def bench_torch_step(height, width, repeat):
    """The same step in PyTorch (random weights, same layers and losses), or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
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

    return {"version": torch.__version__, "step_s": median_time(step, repeat, warmup=2)}


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
          + "  auto GFLOP/s  auto picks (fwd/bwd)")
    for row in rows:
        shape = f"{row['cin']}->{row['cout']} {row['size']}"
        cells = [f"{row[m]['forward_ms']:6.1f}/{row[m]['backward_ms']:6.1f}" for m in methods]
        auto = row["auto"]
        print(f"{row['layer']:8s} {shape:>17s} " + " ".join(f"{c:>13s}" for c in cells)
              + f"  {auto['forward_gflops']:4.0f}/{auto['backward_gflops']:4.0f}"
              + f"     {row['auto_forward']}/{row['auto_backward']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=os.path.join("output", "bench_kit.json"),
                   help="where to write the results")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per measurement")
    p.add_argument("--quick", action="store_true",
                   help="skip the raw loops, FFT, 512x512 and the memory run (about 1 minute)")
    args = p.parse_args(argv)
    reuse_large_allocations()
    rng = np.random.default_rng(0)
    results = {"machine": {"python": platform.python_version(), "numpy": np.__version__,
                           "cpus": os.cpu_count(), "platform": platform.platform()}}
    t0 = time.time()
    rate224, peak224 = gemm_rate(conv_shapes(224, 224), args.repeat, rng)
    results["gemm_gflops_vgg19_224"] = {"aggregate": rate224, "peak": peak224}
    print(f"matrix multiply on VGG19's img2col GEMMs at 224x224: {rate224:.0f} GFLOP/s "
          f"overall, {peak224:.0f} GFLOP/s on the best shape")

    results["layers_224"] = rows = bench_layers(args.repeat, rng, args.quick)
    print_layers(rows)

    st = results["speed_test"] = bench_speed_test(args.quick)
    print("\nLab speed test, ConvolutionalLayer(3, 256, 256, 1, 1) on (1, 256, 24, 40), float64")
    for name, r in st.items():
        extra = ""
        if "forward_ratio" in r:
            extra = (f"  FORWARD SPEEDUP {r['forward_ratio']:.0f}x, BACKWARD SPEEDUP "
                     f"{r['backward_ratio']:.0f}x (MSE {r['forward_mse']:.1e}/"
                     f"{r['backward_mse']:.1e})")
        print(f"  {name:8s} forward {r['forward_ms']:9.1f} ms  backward {r['backward_ms']:9.1f} ms"
              + extra)

    cl = results["classification_224"] = bench_classification(args.repeat, rng)
    print(f"\nVGG19 classification forward 224x224 ({cl['gflop']:.1f} GFLOP): lab img2col "
          f"{cl['lab_img2col_s']:.3f} s, auto {cl['auto_s']:.3f} s; GEMM limit "
          f"{cl['gemm_limit_s']:.3f} s at {cl['gemm_gflops']:.0f} GFLOP/s -> "
          f"{cl['ratio_auto']:.2f}x")

    sizes = [(192, 320), (224, 224)] + ([] if args.quick else [(512, 512)])
    results["style_step"] = []
    print("\nStyle-transfer step (forward to relu5_1, 6 losses, one backward, Adam), auto:")
    for h, w in sizes:
        r = bench_style_step(h, w, args.repeat if h * w < 512 * 512 else 3, rng)
        torch_r = bench_torch_step(h, w, args.repeat)
        if torch_r:
            r["torch"] = torch_r
        results["style_step"].append(r)
        extra = (f"; PyTorch {torch_r['version']}: {torch_r['step_s']:.3f} s "
                 f"({r['step_s'] / torch_r['step_s']:.2f}x)" if torch_r else "")
        print(f"  {r['size']:>8s}: {r['step_s']:.3f} s/step, {r['gflop']:.0f} GFLOP, GEMM limit "
              f"{r['gemm_limit_s']:.3f} s at {r['gemm_gflops']:.0f} GFLOP/s -> "
              f"{r['ratio']:.2f}x (at the best-shape rate {r['gemm_peak_gflops']:.0f} GFLOP/s: "
              f"{r['ratio_at_peak']:.2f}x){extra}")
    if not args.quick:
        peak = results["peak_memory_512_bytes"] = bench_peak_memory(512, 512)
        print(f"\nPeak memory of a 512x512 style-transfer run (3 steps): {peak / 2**30:.2f} GiB")
    results["seconds"] = time.time() - t0
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n{results['seconds']:.0f} s; results written to {args.json}")


if __name__ == "__main__":
    main()
