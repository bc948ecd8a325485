"""Run bookkeeping for the style-transfer driver (not a student file): run ids, the per-step
CSV log, the loss-curve picture and the contact sheet (Pillow only), atomic writes."""
import csv
import math
import os
import time

import numpy as np
from PIL import Image, ImageDraw

from labkit.runtime.cli import OutputError, atomic_path, write_failure


def make_run_id(folder, seed, now=None):
    """``YYYYmmdd-HHMMSS_seed<seed>``, with ``_2``, ``_3``... when taken, claimed atomically:
    the run's log ``<run id>_log.csv`` is created with O_EXCL, so two runs started in the
    same second (same seed, same folder) never get the same id, even when both looked at
    the folder before either wrote a file. The claimed (empty) log is the run's to write."""
    base = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"_seed{seed}"
    existing = os.listdir(folder) if os.path.isdir(folder) else []
    for k in range(1, 100000):
        run_id = base if k == 1 else f"{base}_{k}"
        if any(name.startswith(run_id + "_") for name in existing):
            continue
        try:
            fd = os.open(os.path.join(folder, run_id + "_log.csv"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return run_id
    raise OutputError(f"--output-dir {folder}: no free run id for {base}; choose another "
                      f"folder.")


def save_image_atomic(img, path, **kw):
    """``PIL.Image.save`` to a temporary name (same extension: Pillow picks the format from
    it), then rename: never a half-written file."""
    with atomic_path(path, mode=0o666) as tmp:      # the permissions open() would give
        img.save(tmp, **kw)
    return path


def read_log(path, upto=None):
    """The rows of a CSV log as dicts of floats (step as int), up to step ``upto``.

    Read tolerantly, as a spreadsheet may have re-saved it: a BOM, ``;`` or tab as the
    separator (then a decimal comma is read as a point), blank lines, and lines that are
    not a row of numbers (notes, a repeated header) are skipped; a value that is not a
    number leaves that column out of the row. Rows need a whole-number step."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    header_at = next((i for i, line in enumerate(lines) if "step" in line and "total" in line),
                     None)
    if header_at is None:
        return []
    header = lines[header_at]
    delimiter = max((",", ";", "\t"), key=header.count)
    columns = [c.strip().strip('"') for c in next(csv.reader([header], delimiter=delimiter))]
    rows = []
    for row in csv.reader(lines[header_at + 1:], delimiter=delimiter):
        rec = {}
        for name, value in zip(columns, row):
            value = value.strip().strip('"')
            if delimiter != "," and "," in value and "." not in value:
                value = value.replace(",", ".")
            try:
                rec[name] = int(value) if name == "step" else float(value)
            except ValueError:
                continue
        if "step" not in rec or rec["step"] < 0:
            continue                       # a note, a repeated header, a stray line
        if upto is None or rec["step"] <= upto:
            rows.append(rec)
    return rows


class CsvLog:
    """One row per step: step, total, content, style_<layer>..., tv, seconds (flushed each
    row, so the log survives Ctrl-C and crashes). ``keep``: rows to start with (a resumed
    run keeps its log up to the checkpoint's step; the file is rewritten atomically)."""

    def __init__(self, path, part_names, keep=()):
        self.path = path
        self.columns = ["step", "total"] + list(part_names) + ["seconds"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with atomic_path(path, mode=0o666) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            for record in keep:
                writer.writerow(self._row(record))
        self.file = open(path, "a", newline="")
        self.writer = csv.writer(self.file)

    def _row(self, record):
        row = []
        for col in self.columns:
            value = record.get(col, "")
            row.append(value if col == "step" or value == "" else f"{float(value):.6g}")
        return row

    def write(self, record):
        try:
            self.writer.writerow(self._row(record))
            self.file.flush()
        except OSError as exc:          # a full disk: one message; the checkpoint is intact
            raise OutputError(write_failure("log", self.path, exc)) from None

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
        return save_image_atomic(img, path)
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
    return save_image_atomic(img, path)


def preserve_colors(content_rgb, output_rgb):
    """Luminance transfer (``labkit.runtime.colour.luminance_transfer``)."""
    from labkit.runtime.colour import luminance_transfer
    return luminance_transfer(content_rgb, output_rgb)


def _thumbnail(rgb, height, max_width=None):
    """The picture scaled to fit ``height`` x ``max_width`` (default 4 x height), aspect
    kept, at least 1 pixel a side: a 3x10000 strip gives a small thumbnail, not a huge one."""
    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8), "RGB")
    max_width = max_width or 4 * height
    scale = min(height / img.height, max_width / img.width)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.BILINEAR)


def contact_sheet(path, tiles, thumb_height=128, columns=6, title=""):
    """One PNG with every tile: ``tiles`` = [(rgb (H, W, 3) uint8, [label lines])], drawn in
    rows of ``columns`` thumbnails ``thumb_height`` pixels high, each with its label lines
    below (Pillow's default font). Written atomically; returns ``path``."""
    if not tiles:
        raise ValueError("contact_sheet: no tiles")
    thumbs = [(_thumbnail(rgb, thumb_height), lines) for rgb, lines in tiles]
    line_h, pad = 12, 8
    label_h = line_h * max(len(lines) for _, lines in thumbs)
    cell_w = max(max(t.width for t, _ in thumbs),
                 max(6 * len(line) for _, lines in thumbs for line in lines))
    cell_h = thumb_height + label_h + pad
    ncols = min(columns, len(thumbs))
    nrows = -(-len(thumbs) // ncols)
    top = 20 if title else 0
    sheet = Image.new("RGB", (pad + ncols * (cell_w + pad), top + pad + nrows * cell_h),
                      "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 5), title, fill=(0, 0, 0))
    for i, (thumb, lines) in enumerate(thumbs):
        x = pad + (i % ncols) * (cell_w + pad)
        y = top + pad + (i // ncols) * cell_h
        sheet.paste(thumb, (x, y))
        for j, line in enumerate(lines):
            draw.text((x, y + thumb_height + 2 + j * line_h), line, fill=(0, 0, 0))
    return save_image_atomic(sheet, path)
