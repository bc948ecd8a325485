"""Exp 3.2 calibration: INT8 quantisation parameters for VGG19 from float CPU runs.

Runs the float CPU network (``stu_upload.vgg_cpu.VGG19``, img2col layers, float32) over
calibration images, records max |x| of the *input* of each of the 19 quantised layers
(16 convs, fc6, fc7, fc8) and of each layer's filter, and writes the lab's quant file
(``input`` / ``filter``: flat ``[pos0, scale0, ...]``, 19 pairs each) with
``pycnml_sim.save_quant_npz``.  The positions/scales follow CNML's max-abs rule
(``pycnml_sim.calibrate``: ``position = ceil(log2(m / 127))``, scale in [1, 2)).

    python -m labkit.runtime.calibrate --weights models/imagenet-vgg-verydeep-19.mat \\
        --images cat1.jpg dog.png photos/ --out models/vgg19_quant_param_new.npz
    python -m labkit.runtime.calibrate --demo --weights W.mat --out Q.npz   # synthetic images

``read_quant_pairs`` reads such a file back as plain ``(position, scale)`` pairs, so that
``stu_upload/vgg19_demo.py`` can build the QuantParams of whichever pycnml is installed.
"""
import os
import sys

import numpy as np

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.cli import (DEFAULT_WEIGHTS, LabParser, UserError, atomic_output,
                                check_output_path, run_main)

DEFAULT_QUANT = os.path.join("models", "vgg19_quant_param_new.npz")
QUANT_LAYERS = list(spec.CONV_NAMES)          # 19: conv1_1 ... conv5_4, fc6, fc7, fc8
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class QuantFileError(UserError, FileNotFoundError):
    """The quantisation parameter file is missing or malformed."""


def calibration_command(weights=DEFAULT_WEIGHTS, out=DEFAULT_QUANT):
    """The shell command that makes the quant file (quoted in error messages)."""
    return (f"python -m labkit.runtime.calibrate --weights {weights} --images IMAGE [IMAGE ...] "
            f"--out {out}")


def read_quant_pairs(path, weights=DEFAULT_WEIGHTS):
    """Read the lab's quant .npz -> ``(input_pairs, filter_pairs)``, 19 ``(int, float)`` each.

    The default path is looked for in the current folder, then in the repository. Every
    problem (missing, not an .npz, truncated, wrong keys, strings, wrong counts, bad values)
    raises :class:`QuantFileError` naming the file, the problem and the calibration command.
    """
    from labkit.runtime.cli import find_default, input_problem, looked_in
    path = os.fspath(path)
    if os.path.normpath(path) == os.path.normpath(DEFAULT_QUANT):
        path = find_default(path)
    how = f"make one with:\n    {calibration_command(weights, path)}"
    problem = input_problem(path)
    if problem and (not os.path.lexists(path) or os.path.isdir(path)):
        where = looked_in(path) if os.path.normpath(path) == os.path.normpath(DEFAULT_QUANT) \
            else f"looked for {os.path.abspath(path)}"
        what = "is a folder, not a file" if os.path.isdir(path) else f"not found ({where})"
        raise QuantFileError(f"quantisation parameter file {path} {what}.\n  The DLP net "
                             f"needs the INT8 positions/scales of its 19 conv/fc layers; {how}")
    if problem:
        raise QuantFileError(f"quantisation parameter file {path} {problem}; {how}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:    # not a NumPy file at all, or a damaged one
        raise QuantFileError(f"cannot read {path} as an .npz file ({type(exc).__name__}: "
                             f"{_short(exc)}); it is truncated, damaged or not a quantisation "
                             f"file; {how}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise QuantFileError(f"{path} is a .npy file (one array of shape {np.shape(data)}), not "
                             f"the .npz quantisation file with arrays 'input' and 'filter'; "
                             f"{how}")
    with data:
        try:
            return tuple(_pairs_of(data, key, path, how) for key in ("input", "filter"))
        except QuantFileError:
            raise
        except Exception as exc:    # a damaged member of the zip archive
            raise QuantFileError(f"cannot read {path}: {type(exc).__name__}: {_short(exc)}; "
                                 f"the file is truncated or damaged; {how}") from None


def _short(exc, limit=160):
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _pairs_of(data, key, path, how):
    """The 19 (position, scale) pairs stored under ``key`` of an open .npz, checked."""
    if key not in data.files:
        raise QuantFileError(f"{path} has no key {key!r} (it has {sorted(data.files)}); "
                             f"the lab's quant file has 'input' and 'filter'; {how}")
    raw = data[key]
    if raw.dtype.kind not in "iuf":
        raise QuantFileError(f"{path}: {key!r} holds {raw.dtype} values, expected numbers "
                             f"(19 [position, scale] pairs); {how}")
    arr = np.asarray(raw, dtype=np.float64).ravel()
    if arr.size != 2 * len(QUANT_LAYERS):
        raise QuantFileError(f"{path}: {key!r} holds {arr.size} numbers, expected "
                             f"{2 * len(QUANT_LAYERS)} (19 [position, scale] pairs: 16 "
                             f"convs, fc6, fc7, fc8); {how}")
    pairs = [(arr[i], arr[i + 1]) for i in range(0, arr.size, 2)]
    for i, (pos, scale) in enumerate(pairs):
        if not (np.isfinite(pos) and pos == int(pos) and abs(pos) <= 150
                and np.isfinite(scale) and scale > 0):
            raise QuantFileError(f"{path}: {key} pair {i} ({QUANT_LAYERS[i]}) is "
                                 f"({pos}, {scale}); position must be an integer in "
                                 f"[-150, 150] and scale positive; {how}")
    return [(int(p), float(s)) for p, s in pairs]


def find_images(items):
    """Expand files and folders (their image files, sorted) into a list of image paths."""
    paths = []
    for item in items:
        if not os.path.exists(item):
            raise UserError(f"--images: {item} not found (looked for {os.path.abspath(item)}).")
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTS))
            if not found:
                raise UserError(f"folder {item} holds no image files ({', '.join(IMAGE_EXTS)})")
            paths += found
        else:
            paths.append(item)
    if not paths:
        raise UserError("no calibration images: pass --images FILE_OR_FOLDER ... (or --demo)")
    return paths


def demo_images(folder, count=4, seed=0):
    """Write ``count`` synthetic 224x224 PNGs (labkit.runtime.images.make_demo_image) to ``folder``."""
    from labkit.runtime.images import make_demo_image, save_rgb
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(os.path.join(folder, f"calib_{i}.png"))
        save_rgb(make_demo_image(224, 224, seed=seed + i), paths[-1])
    return paths


def collect_max_abs(weights_path, images, verbose=True):
    """Float CPU runs -> ``(input_max, filter_max)``: dicts over QUANT_LAYERS of max |x|.

    ``input_max[name]`` is max |x| over all images of the tensor entering layer ``name``
    (for fc6: the flattened pool5, whose max does not depend on the flatten order).
    """
    from labkit.runtime.student import stu
    cpu = stu.vgg_cpu.VGG19(weights_path, type=1, dtype=np.float32, verbose=False)
    cpu.build_model()
    cpu.load_model()
    filter_max = {layer.name: float(np.max(np.abs(layer.weight)))
                  for layer in cpu.file.layers if layer.name in QUANT_LAYERS}
    input_max = dict.fromkeys(QUANT_LAYERS, 0.0)
    for n, path in enumerate(images, 1):
        x = cpu.load_image(path)
        for name in cpu.param_layer_name:
            if name in input_max:
                input_max[name] = max(input_max[name], float(np.max(np.abs(x))))
            x = cpu.layers[name].forward(x)
        if verbose:
            print(f"  calibrated on {n}/{len(images)}: {path}", flush=True)
    return input_max, filter_max


def calibrate_vgg19(weights_path, images, out_path, verbose=True):
    """Run the CPU net over ``images`` and write the quant .npz; returns (inputs, filters)
    as lists of ``(position, scale)`` in QUANT_LAYERS order."""
    from labkit.runtime import pycnml_sim
    input_max, filter_max = collect_max_abs(weights_path, images, verbose)
    inputs = [pycnml_sim.calibrate(input_max[name]) for name in QUANT_LAYERS]
    filters = [pycnml_sim.calibrate(filter_max[name]) for name in QUANT_LAYERS]
    write_quant_npz(out_path, inputs, filters)
    return inputs, filters


def write_quant_npz(out_path, inputs, filters, flag="--out"):
    """Write the quant file to exactly ``out_path`` (no ``.npz`` appended), atomically: a
    temporary file in the same folder, renamed when complete."""
    from labkit.runtime import pycnml_sim
    with atomic_output(out_path, flag) as tmp:
        with open(tmp, "wb") as f:      # a file object: np.savez adds no suffix
            pycnml_sim.save_quant_npz(f, inputs, filters)
    return out_path


def parse_args(argv=None):
    p = LabParser(
        prog="python -m labkit.runtime.calibrate",
        description="Make the INT8 quantisation file for exp 3.2 (VGG19 on the DLP) from float "
        "CPU runs of VGG19 over calibration images.")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS,
                   help="MatConvNet VGG19 .mat file (the same one the DLP net will load)")
    p.add_argument("--images", nargs="+", default=[], metavar="FILE_OR_FOLDER",
                   help="calibration images, or folders of images; use pictures like the ones "
                   "you will classify (a few to a few dozen)")
    p.add_argument("--demo", action="store_true",
                   help="calibrate on 4 synthetic images (written next to --out) instead of "
                   "--images; for the demo network only, not for real photos")
    p.add_argument("--out", default=DEFAULT_QUANT, help="where to write the .npz")
    return p.parse_args(argv)


def check_inputs(args):
    """Everything a user gave, checked before the network is loaded or run."""
    from labkit.runtime.images import load_rgb
    from labkit.runtime.matfile import check_weights_path
    args.weights = check_weights_path(args.weights)
    check_output_path(args.out, "--out")
    images = [] if args.demo and not args.images else find_images(args.images)
    for path in images:
        load_rgb(path)          # decodes each image once: a bad one fails now, not midway
    return images


def main(argv=None):
    args = parse_args(argv)
    images = check_inputs(args)
    if args.demo:
        folder = os.path.join(os.path.dirname(os.path.abspath(args.out)), "calib_images")
        images = demo_images(folder) + images
        print(f"DEMO calibration on synthetic images in {folder}")
    inputs, filters = calibrate_vgg19(args.weights, images, args.out)
    print(f"{'layer':8s} {'input (pos, scale)':>22s} {'filter (pos, scale)':>22s}")
    for name, (ip, isc), (fp, fsc) in zip(QUANT_LAYERS, inputs, filters):
        print(f"{name:8s} {ip:8d} {isc:13.6f} {fp:8d} {fsc:13.6f}")
    print(f"wrote {args.out} ({len(QUANT_LAYERS)} input and filter pairs, {len(images)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
