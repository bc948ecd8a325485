"""Run bookkeeping for the style-transfer driver (not a student file): run ids, the per-step
CSV log, the loss-curve picture (Pillow only) and colour preservation."""
import csv
import math
import os
import time

import numpy as np
from PIL import Image, ImageDraw


def make_run_id(folder, seed, now=None):
    """``YYYYmmdd-HHMMSS_seed<seed>``, with ``_2``, ``_3``... if files with it already exist."""
    base = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"_seed{seed}"
    existing = os.listdir(folder) if os.path.isdir(folder) else []
    run_id, k = base, 1
    while any(name.startswith(run_id + "_") for name in existing):
        k += 1
        run_id = f"{base}_{k}"
    return run_id


class CsvLog:
    """One row per step: step, total, content, style_<layer>..., tv, seconds (flushed each
    row, so the log survives Ctrl-C and crashes)."""

    def __init__(self, path, part_names):
        self.path = path
        self.columns = ["step", "total"] + list(part_names) + ["seconds"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.columns)
        self.file.flush()

    def write(self, record):
        row = []
        for col in self.columns:
            value = record.get(col, "")
            row.append(value if col == "step" or value == "" else f"{float(value):.6g}")
        self.writer.writerow(row)
        self.file.flush()

    def close(self):
        if not self.file.closed:
            self.file.close()


def plot_losses(history, path, keys=("total", "content", "style", "tv"), size=(640, 400)):
    """Draw log10 loss curves against the step into a PNG with Pillow's ImageDraw."""
    colours = {"total": (0, 0, 0), "content": (31, 119, 180), "style": (214, 39, 40),
               "tv": (44, 160, 44)}
    width, height = size
    left, right, top, bottom = 60, 110, 20, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    series = {}
    for key in keys:
        pts = [(r["step"], r[key]) for r in history
               if key in r and r[key] and math.isfinite(r[key]) and r[key] > 0]
        if pts:
            series[key] = [(s, math.log10(v)) for s, v in pts]
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    draw.text((left, height - bottom + 22), "step", fill=(0, 0, 0))
    draw.text((left, 4), "log10(loss)", fill=(0, 0, 0))
    if not series:
        draw.text((left + 10, top + 10), "no finite losses to plot", fill=(0, 0, 0))
        img.save(path)
        return path
    xs = [s for pts in series.values() for s, _ in pts]
    ys = [v for pts in series.values() for _, v in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = math.floor(min(ys)), math.ceil(max(ys))
    y1 = y1 if y1 > y0 else y0 + 1

    def px(step, val):
        return (left + (step - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (val - y0) / (y1 - y0) * (height - top - bottom))

    for tick in range(int(y0), int(y1) + 1):
        _, y = px(x0, tick)
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((left - 30, y - 6), f"{tick}", fill=(0, 0, 0))
    for step in (x0, x1):
        x, _ = px(step, y0)
        draw.text((x - 6, height - bottom + 6), f"{step}", fill=(0, 0, 0))
    for i, (key, pts) in enumerate(series.items()):
        colour = colours.get(key, (128, 0, 128))
        line = [px(s, v) for s, v in pts]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        else:
            x, y = line[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        ly = top + 10 + 18 * i
        draw.line([width - right + 10, ly, width - right + 30, ly], fill=colour, width=2)
        draw.text((width - right + 35, ly - 6), key, fill=(0, 0, 0))
    img.save(path)
    return path


def preserve_colors(content_rgb, output_rgb):
    """Luminance transfer: the output's Y with the content's Cb and Cr (YCbCr, as
    neural-style's ``-original_colors``). Both (H, W, 3) uint8; content is resized."""
    out = Image.fromarray(np.asarray(output_rgb, dtype=np.uint8), "RGB")
    content = Image.fromarray(np.asarray(content_rgb, dtype=np.uint8), "RGB")
    if content.size != out.size:
        content = content.resize(out.size, Image.BILINEAR)
    y, _, _ = out.convert("YCbCr").split()
    _, cb, cr = content.convert("YCbCr").split()
    return np.asarray(Image.merge("YCbCr", (y, cb, cr)).convert("RGB"), dtype=np.uint8)
