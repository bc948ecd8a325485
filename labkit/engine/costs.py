"""What each convolution method executes: multiplies and bytes moved (not a student file).

A cost model of the engine as it runs (``labkit.engine.conv_engine``), used by
``benchmarks/bench_kit.py`` to set the step time against the machine's limits:

* ``mults``: the multiply-adds actually executed, counted from the shapes of the GEMMs each
  method performs (img2col: one (Cout x 9Cin) @ (9Cin x HW) GEMM; Winograd F(m x m, 3x3):
  the input transform kron(B^T, B^T) @ tiles, (m+2)^2 GEMMs with the transformed filter, the
  output transform kron(A^T, A^T) @ products; FFT: the "taps" GEMM and the transforms);
* ``bytes``: every array each stage reads and writes, counted once per pass (padding copy,
  img2col columns or Winograd tiles, transforms, GEMM operands and results, the output and
  its bias/ReLU epilogue). This is the traffic if no intermediate stayed in cache; the
  engine's chunks of tile rows keep most of it in cache, so it overstates what reaches DRAM.
* ``min_bytes``: the compulsory traffic (read the input and weights once, write the output).

All counts are for one image (N = 1), a 3x3 kernel with padding 1, stride 1 and float32
(``itemsize`` 4). ``stages`` splits ``mults`` and ``bytes`` by pass for the profile tables.
"""
from labkit.engine.conv_algos import winograd_plan
from labkit.engine.conv_engine import choose_method

WINOGRAD_M = {"winograd": 2, "winograd4": 4}


def _stage(stages, name, mults, read, write, itemsize):
    stages[name] = {"mults": float(mults), "bytes": float(read + write) * itemsize}


def conv_cost(method, cin, cout, h, w, itemsize=4, mask=False, relu=False):
    """{'mults', 'bytes', 'min_bytes', 'stages'} of one 3x3/pad 1 convolution
    (N=1, cin x h x w -> cout x h x w) by ``method`` ("lab" and "img2col" alike).
    ``mask``: the input is multiplied by a ReLU mask in the padding copy (fused backward);
    ``relu``: the output gets max(y, 0) (fused forward)."""
    hw, k2 = h * w, 9
    x, y, wt = cin * hw, cout * hw, k2 * cin * cout
    hp, wp = h + 2, w + 2
    st = {}
    if method in ("lab", "img2col"):
        _stage(st, "pad", 0, x + (x if mask else 0), cin * hp * wp, itemsize)
        _stage(st, "gather", 0, k2 * x, k2 * x, itemsize)
        _stage(st, "gemm", wt * hw, k2 * x + wt, y, itemsize)
        _stage(st, "epilogue", 0, y * (1 + relu), y * (1 + relu), itemsize)
    elif method in WINOGRAD_M:
        m = WINOGRAD_M[method]
        a2 = (m + 2) ** 2
        th, tw = -(-h // m), -(-w // m)
        t = th * tw
        mode, step = winograd_plan(cin, cout, th, tw, m, itemsize)
        bands = -(-th // step) if mode == "rows" else 1     # chunks: each reads U once
        _stage(st, "pad", 0, x + (x if mask else 0), cin * (th * m + 2) * (tw * m + 2), itemsize)
        _stage(st, "gather", 0, a2 * cin * t, a2 * cin * t, itemsize)
        _stage(st, "input transform", a2 * a2 * cin * t, a2 * cin * t + a2 * a2, a2 * cin * t,
               itemsize)
        _stage(st, "gemm", a2 * cin * cout * t, a2 * cin * t + bands * a2 * cin * cout,
               a2 * cout * t, itemsize)
        _stage(st, "output transform", m * m * a2 * cout * t, a2 * cout * t, m * m * cout * t,
               itemsize)
        _stage(st, "epilogue", 0, m * m * cout * t + y * relu, y * (1 + relu), itemsize)
    elif method == "fft":
        import scipy.fft as sfft
        p, q = sfft.next_fast_len(hp, real=True), sfft.next_fast_len(wp, real=True)
        qr = q // 2 + 1
        spec_in, spec_out = cin * p * qr * 2, cout * p * qr * 2        # real numbers
        lg = max(1.0, (p * q).bit_length())
        _stage(st, "pad", 0, x + (x if mask else 0), cin * hp * wp, itemsize)
        _stage(st, "rfft2", 2.5 * cin * p * q * lg, cin * hp * wp, spec_in, itemsize)
        _stage(st, "gemm", k2 * cout * cin * p * qr * 2, spec_in + wt, k2 * spec_out, itemsize)
        _stage(st, "phases", 4 * k2 * cout * p * qr, k2 * spec_out, spec_out, itemsize)
        _stage(st, "irfft2", 2.5 * cout * p * q * lg, spec_out, cout * p * q, itemsize)
        _stage(st, "epilogue", 0, y * (1 + relu), y * (1 + relu), itemsize)
    else:
        raise ValueError(f"conv_cost: unknown method {method!r}")
    return {"mults": sum(s["mults"] for s in st.values()),
            "bytes": sum(s["bytes"] for s in st.values()),
            "min_bytes": float(x + wt + y) * itemsize, "stages": st}


def narrow_input_grad_cost(cin, cout, h, w, itemsize=4):
    """conv1_1's input gradient (GEMM + col2im; ``conv2d_input_grad_img2col``) with the ReLU
    mask applied to dy first."""
    hw = h * w
    dy, dx, wt = cout * hw, cin * hw, 9 * cin * cout
    st = {}
    _stage(st, "mask", 0, 2 * dy, dy, itemsize)
    _stage(st, "gemm", wt * hw, dy + wt, 9 * dx, itemsize)
    _stage(st, "col2im", 0, 9 * dx + 9 * dx, 9 * dx + cin * (h + 2) * (w + 2), itemsize)
    _stage(st, "crop", 0, dx, dx, itemsize)
    return {"mults": sum(s["mults"] for s in st.values()),
            "bytes": sum(s["bytes"] for s in st.values()),
            "min_bytes": float(dy + wt + dx) * itemsize, "stages": st}


def pool_cost(c, h, w, backward=False, itemsize=4):
    """2x2/2 max-pooling of c x h x w: forward reads x, writes y; backward reads x, y (per
    window offset), dy and writes dx."""
    x, y = c * h * w, c * (h // 2) * (w // 2)
    traffic = (x + 4 * y + 4 * y + x) if backward else (x + y)
    return {"mults": 0.0, "bytes": float(traffic) * itemsize,
            "min_bytes": float(x + 2 * y if backward else x + y) * itemsize}


def gram_cost(c, hw, itemsize=4):
    """A style loss at one layer (``labkit.engine.losses``): G = F F^T as a symmetric
    rank-k update (syrk: C (C + 1) / 2 * HW multiply-adds) and dF = s (G - A)^T F (C^2 HW)."""
    return {"mults": (c * (c + 1) / 2.0 + c * c) * hw, "bytes": float(3 * c * hw + 3 * c * c) * itemsize,
            "min_bytes": float(2 * c * hw) * itemsize}


def style_step_costs(height, width, conv_shapes, style_layers, methods=None):
    """[(part, cost dict)] of one style-transfer step of the tuned engine: the convolutions
    (fused ReLU) and pools forward to the deepest conv in ``conv_shapes`` [(name, Cin, Cout,
    H, W)], the Gram matrices of ``style_layers``, and the backward to the image.
    ``methods``: {name: (forward method, backward method)}, default ``choose_method``."""
    parts = []
    pool_before = {"conv2_1", "conv3_1", "conv4_1", "conv5_1"}
    for name, cin, cout, h, w in conv_shapes:
        if name in pool_before:
            parts.append((f"pool{int(name[4]) - 1} fwd", pool_cost(cin, 2 * h, 2 * w)))
        fwd = (methods or {}).get(name, (choose_method(3, 1, cin, cout, h, w),))[0]
        parts.append((f"{name} fwd {fwd}", conv_cost(fwd, cin, cout, h, w, relu=True)))
    sizes = {name.replace("conv", "relu"): (cout, h * w) for name, _, cout, h, w in conv_shapes}
    for layer in style_layers:
        if layer in sizes:
            parts.append((f"gram {layer}", gram_cost(*sizes[layer])))
    for name, cin, cout, h, w in reversed(conv_shapes):
        if cin * 9 <= cout:
            parts.append((f"{name} bwd img2col", narrow_input_grad_cost(cin, cout, h, w)))
        else:
            bwd = (methods or {}).get(name, (None, choose_method(3, 1, cout, cin, h, w)))[1]
            parts.append((f"{name} bwd {bwd}", conv_cost(bwd, cout, cin, h, w, mask=True)))
        if name in pool_before:
            parts.append((f"pool{int(name[4]) - 1} bwd", pool_cost(cin, 2 * h, 2 * w, True)))
    return parts


def bounds(parts, peak_gflops, bandwidth_gbs):
    """Lower bounds of running ``parts`` on a machine with this peak multiply rate (GFLOP/s,
    2 FLOPs per multiply-add) and copy bandwidth (GB/s):

    compute_s     the multiplies executed, at the peak rate;
    min_memory_s  the compulsory bytes (inputs, weights, outputs once), at the bandwidth;
    limit_s       the larger of those two: no implementation of these algorithms is faster;
    memory_s      every byte the engine's passes move (no cache reuse), at the bandwidth;
    roofline_s    each part at the larger of its compute and pass-traffic times: the time
                  of this implementation if each pass ran at the machine's limit."""
    comp = [2.0 * c["mults"] / (peak_gflops * 1e9) for _, c in parts]
    mem = [c["bytes"] / (bandwidth_gbs * 1e9) for _, c in parts]
    min_mem = sum(c["min_bytes"] for _, c in parts) / (bandwidth_gbs * 1e9)
    return {"compute_s": sum(comp), "memory_s": sum(mem), "min_memory_s": min_mem,
            "limit_s": max(sum(comp), min_mem),
            "roofline_s": sum(max(a, b) for a, b in zip(comp, mem)),
            "mults": sum(c["mults"] for _, c in parts), "bytes": sum(c["bytes"] for _, c in parts)}
