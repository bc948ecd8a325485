"""Sizes for the style-transfer driver (not a student file): multi-scale schedules, a
bilinear resize of network images, the smallest image VGG19 can take, and the memory rule.

Multi-scale (coarse to fine, ``--scales 256,384,512``): each scale is the LONGER side of the
working image at that stage (the aspect ratio is the working size's); the optimisation runs
at each scale in turn and the result is upsampled (bilinear) to start the next one, so the
final image has the last scale's size. ``--steps`` is split equally across the scales and
the remainder goes to the finest ones: 100 steps over 3 scales -> 33, 33, 34.
"""
import numpy as np

from labkit.runtime import vgg19_spec as spec


def scale_sizes(height, width, scales):
    """(height, width) and longer sides ``scales`` -> [(h, w)] keeping height:width."""
    longer = max(height, width)
    return [(max(1, round(height * s / longer)), max(1, round(width * s / longer)))
            for s in scales]


def split_steps(steps, count):
    """``steps`` over ``count`` scales: equal shares, the remainder to the finest scales."""
    if count < 1 or steps < count:
        raise ValueError(f"{steps} steps cannot be split over {count} scales (one step each "
                         f"at least).")
    base, extra = divmod(steps, count)
    return [base + (1 if i >= count - extra else 0) for i in range(count)]


def schedule(height, width, scales, steps):
    """[(start step, steps, (h, w))] for each stage; one stage without ``scales``."""
    if not scales:
        return [(0, steps, (height, width))]
    out, start = [], 0
    for n, size in zip(split_steps(steps, len(scales)), scale_sizes(height, width, scales)):
        out.append((start, n, size))
        start += n
    return out


def _axis_weights(n_in, n_out):
    """Half-pixel-centre bilinear sampling (Pillow's and align_corners=False convention)."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo


def resize_bilinear_nchw(x, height, width):
    """(N, C, H, W) float -> (N, C, height, width), bilinear, computed in float64 and returned
    in x's dtype (used to upsample the image between scales)."""
    x64 = np.asarray(x, dtype=np.float64)
    lo, hi, f = _axis_weights(x64.shape[2], height)
    rows = x64[:, :, lo, :] * (1 - f)[:, None] + x64[:, :, hi, :] * f[:, None]
    lo, hi, f = _axis_weights(x64.shape[3], width)
    out = rows[:, :, :, lo] * (1 - f) + rows[:, :, :, hi] * f
    return np.ascontiguousarray(out.astype(x.dtype))


def pools_before(layer):
    """How many 2x2 poolings come before ``layer`` in VGG19."""
    names = spec.FILE_LAYER_NAMES
    return sum(1 for n in names[:names.index(layer)] if n.startswith("pool"))


def min_side(deepest_layer):
    """The smallest image side that still leaves ``deepest_layer`` one pixel: 2^pools."""
    return 2 ** pools_before(deepest_layer)


def feature_shapes(height, width, deepest_layer, width_div=1):
    """[(name, channels, h, w)] of VGG19's layers up to ``deepest_layer`` (floor rule)."""
    out, h, w, c = [], height, width, 3
    for name, kind, cout in spec.FILE_LAYERS:
        if kind == "conv":
            c = max(1, cout // width_div)
        elif kind == "pool":
            h, w = h // 2, w // 2
        out.append((name, c, h, w))
        if name == deepest_layer:
            break
    return out


def estimate_bytes(height, width, deepest_layer, itemsize, width_div=1, forward_only=False):
    """The memory rule (bytes) of one forward + backward at (height, width): every layer's
    output twice (kept by forward, then its gradient) plus the largest img2col matrix twice
    (columns and their gradient), plus the image, its gradient and Adam's two moments.
    A forward alone (the style targets) counts the outputs and the img2col matrix once."""
    shapes = feature_shapes(height, width, deepest_layer, width_div)
    outputs = sum(c * h * w for _, c, h, w in shapes)
    cols, cin = 0, 3
    for name, c, h, w in shapes:
        if name.startswith("conv"):
            cols = max(cols, h * w * cin * 9)
        cin = c
    image = 3 * height * width
    if forward_only:
        return itemsize * (outputs + cols + image)
    return itemsize * (2 * outputs + 2 * cols) + 8 * 4 * image


def mem_available():
    """MemAvailable of /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
