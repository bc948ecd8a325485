"""Colour preservation for the style-transfer outputs (not a student file).

Two ways to keep the content photo's colours while keeping the style's texture:

* ``luminance`` (neural-style's ``-original_colors``): the output's luminance Y with the
  content's chroma Cb, Cr (YCbCr). Keeps the content's hues exactly where they were.
* ``histogram``: each RGB channel of the output gets the content's histogram of that channel
  (exact histogram specification by rank). Done in RGB, not in a luminance/chroma space,
  because RGB is what is saved: a match in YCbCr is undone by the conversion back (the
  channels mix, round and clip), while a match in RGB makes the saved file's three channel
  histograms *equal* to the content's. The output's own ordering of values inside each
  channel is kept, so strokes and texture stay where the optimisation put them; only which
  value each rank gets changes. The match runs on the unrounded float image, whose values
  are almost all distinct, so equal values are rare and are ordered by position.
"""
import numpy as np
from PIL import Image

from labkit.runtime.images import deprocess, resize_bilinear

COLOUR_MODES = ("luminance", "histogram")


def match_channel(source, reference):
    """Histogram specification of one channel: the value of rank r in ``source`` becomes
    the value of rank r in ``reference`` (quantile r / (n - 1) when the sizes differ).
    ``source`` float array (any shape); ``reference`` 1-D values. Returns source's shape."""
    flat = np.asarray(source, dtype=np.float64).reshape(-1)
    ref = np.sort(np.asarray(reference, dtype=np.float64).reshape(-1))
    if ref.size == flat.size:
        values = ref
    else:
        quantiles = np.linspace(0.0, 1.0, flat.size)
        values = np.interp(quantiles, np.linspace(0.0, 1.0, ref.size), ref)
    out = np.empty_like(flat)
    out[np.argsort(flat, kind="stable")] = values
    return out.reshape(np.shape(source))


def histogram_transfer(content_rgb, output_rgb):
    """Each RGB channel of ``output_rgb`` (H, W, 3), float or uint8, gets the histogram of the
    same channel of ``content_rgb`` (uint8, resized to (H, W) first). -> (H, W, 3) uint8."""
    output_rgb = np.asarray(output_rgb, dtype=np.float64)
    h, w = output_rgb.shape[:2]
    content = np.asarray(content_rgb, dtype=np.uint8)
    if content.shape[:2] != (h, w):
        content = resize_bilinear(content, h, w)
    out = np.empty((h, w, 3), dtype=np.uint8)
    for c in range(3):
        matched = match_channel(output_rgb[:, :, c], content[:, :, c])
        out[:, :, c] = np.clip(np.round(matched), 0, 255).astype(np.uint8)
    return out


def luminance_transfer(content_rgb, output_rgb):
    """The output's Y with the content's Cb and Cr (YCbCr). Both (H, W, 3) uint8; the content
    is resized to the output's size."""
    out = Image.fromarray(np.asarray(output_rgb, dtype=np.uint8), "RGB")
    content = Image.fromarray(np.asarray(content_rgb, dtype=np.uint8), "RGB")
    if content.size != out.size:
        content = content.resize(out.size, Image.BILINEAR)
    y, _, _ = out.convert("YCbCr").split()
    _, cb, cr = content.convert("YCbCr").split()
    return np.asarray(Image.merge("YCbCr", (y, cb, cr)).convert("RGB"), dtype=np.uint8)


def to_rgb_float(image, mean_pixel):
    """(1, 3, H, W) mean-subtracted network image -> (H, W, 3) float64 RGB, not rounded."""
    arr = np.asarray(image, dtype=np.float64)[0].transpose(1, 2, 0)
    return arr + np.asarray(mean_pixel, dtype=np.float64).reshape(1, 1, 3)


def render(image, mean_pixel, content_rgb=None, mode=None):
    """The picture saved for a network image: (1, 3, H, W) -> (H, W, 3) uint8, with the
    content's colours when ``mode`` is 'luminance' or 'histogram' (None: as optimised)."""
    if mode == "histogram":
        return histogram_transfer(content_rgb, to_rgb_float(image, mean_pixel))
    plain = deprocess(image, mean_pixel)
    if mode == "luminance":
        return luminance_transfer(content_rgb, plain)
    if mode is not None:
        raise ValueError(f"colour mode must be one of {COLOUR_MODES} or None, got {mode!r}")
    return plain
