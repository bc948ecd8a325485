"""Time img2col / Winograd F(2x2) / Winograd F(4x4) / FFT convolution on VGG19 layer shapes.

    python benchmarks/bench_conv_algos.py [--json out.json] [--repeat 3] [--layers 64x224,128x112]

Each layer is a 3x3, pad 1, stride 1 convolution Cin=Cout=C on a CxHxH float32 input (N=1),
as in VGG19 at 224x224.  Prints best-of-`repeat` milliseconds and the "direct-equivalent"
rate 2*N*Cout*Ho*Wo*Cin*K*K / time in GFLOP/s (so algorithms with fewer multiplies can beat
the GEMM rate), for the forward pass and the input gradient.  The `matmul` column times the
plain np.matmul (Cout, Cin*9) @ (Cin*9, Ho*Wo) that img2col performs: the BLAS ceiling.
Winograd filter transforms are precomputed (a layer caches them), as the FFT one cannot be.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from labkit.engine import conv_algos as ca  # noqa: E402

LAYERS = [(64, 224), (128, 112), (256, 56), (512, 28), (512, 14)]


def best_time(fn, repeat):
    fn()                                   # warm-up (allocations, FFT plans)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def bench_layer(c, h, repeat, n=1, k=3, pad=1):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    w = (rng.standard_normal((c, k, k, c), dtype=np.float32) / np.sqrt(9 * c)).astype(np.float32)
    b = np.zeros(c, np.float32)
    dy = rng.standard_normal((n, c, h, h), dtype=np.float32)
    flops = 2.0 * n * c * h * h * c * k * k
    U2, U4 = ca.winograd_filter_transform(w, 2), ca.winograd_filter_transform(w, 4)
    wr = ca.rotate_filter(w)
    U2r, U4r = ca.winograd_filter_transform(wr, 2), ca.winograd_filter_transform(wr, 4)
    A = rng.standard_normal((c, c * k * k), dtype=np.float32)
    B = rng.standard_normal((c * k * k, h * h), dtype=np.float32)
    fwd = {
        "img2col": lambda: ca.conv2d_img2col(x, w, b, pad, 1),
        "wino2": lambda: ca.conv2d_winograd(x, None, b, pad, U=U2),
        "wino4": lambda: ca.conv2d_winograd4(x, None, b, pad, U=U4),
        "fft": lambda: ca.conv2d_fft(x, w, b, pad),
    }
    bwd = {
        "img2col": lambda: ca.conv2d_input_grad_img2col(dy, w, pad, 1, x.shape),
        "wino2": lambda: ca.conv2d_input_grad_winograd(dy, w, pad, 1, x.shape, U=U2r),
        "wino4": lambda: ca.conv2d_input_grad_winograd4(dy, w, pad, 1, x.shape, U=U4r),
        "fft": lambda: ca.conv2d_input_grad_fft(dy, w, pad, 1, x.shape),
    }
    row = {"layer": f"{c}ch {h}x{h}", "C": c, "H": h, "N": n, "gflop": flops / 1e9}
    row["matmul"] = {"ms": 1e3 * best_time(lambda: np.matmul(A, B), repeat)}
    for direction, fns in (("fwd", fwd), ("dx", bwd)):
        for name, fn in fns.items():
            row[f"{direction}_{name}"] = {"ms": 1e3 * best_time(fn, repeat)}
    for key, v in row.items():
        if isinstance(v, dict):
            v["gflops"] = flops / (v["ms"] * 1e-3) / 1e9
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results as JSON to this path")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layers", help="comma list like 64x224,512x14 (default: VGG19 set)")
    args = ap.parse_args(argv)
    layers = LAYERS if not args.layers else [tuple(map(int, s.split("x"))) for s in args.layers.split(",")]
    cols = ["matmul"] + [f"{d}_{m}" for d in ("fwd", "dx") for m in ("img2col", "wino2", "wino4", "fft")]
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, float32, N=1, 3x3 pad 1; ms (GFLOP/s direct-equivalent)")
    print(f"{'layer':<13}{'GFLOP':>6} " + " ".join(f"{c:>16}" for c in cols))
    rows = []
    for c, h in layers:
        r = bench_layer(c, h, args.repeat)
        rows.append(r)
        cells = " ".join(f"{r[k]['ms']:8.1f} ({r[k]['gflops']:5.1f})" for k in cols)
        best_f = min(("img2col", "wino2", "wino4", "fft"), key=lambda m: r[f"fwd_{m}"]["ms"])
        best_b = min(("img2col", "wino2", "wino4", "fft"), key=lambda m: r[f"dx_{m}"]["ms"])
        r["fastest_fwd"], r["fastest_dx"] = best_f, best_b
        print(f"{r['layer']:<13}{r['gflop']:6.2f} {cells}  best fwd={best_f} dx={best_b}", flush=True)
    if args.json:
        meta = {"numpy": np.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
                "dtype": "float32", "repeat": args.repeat}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
