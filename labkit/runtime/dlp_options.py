"""Exp 3.2's command line (not a student file): the options of ``main_exp_3_2.py``, the demo's
files, the input checks (every path before the weights load: UserError, exit 2, one
message), the --evaluate file list and the comparison with exp 3.1's CPU network.
"""
import os
import time

import numpy as np

from labkit.runtime.calibrate import DEFAULT_QUANT, calibrate_vgg19, demo_images, read_quant_pairs
from labkit.runtime.cli import (DEFAULT_WEIGHTS, NO_LEGACY_FLAG, NO_LEGACY_HELP, LabParser,
                                UserError, check_output_dir, default_output_dir,
                                find_default, input_problem)

DEMO_FOLDER = os.path.join(default_output_dir(), "demo_dlp")


def parse_args(argv=None):
    p = LabParser(
        prog="python main_exp_3_2.py",
        description="Exp 3.2: VGG19 image classification on the DLP (Cambricon MLU270) "
        "through pycnml, or on the NumPy pycnml simulator where there is no DLP; then a "
        "comparison with the float CPU network of exp 3.1.")
    p.add_argument(NO_LEGACY_FLAG, action="store_true", help=NO_LEGACY_HELP)
    p.add_argument("--weights", default=DEFAULT_WEIGHTS,
                   help="MatConvNet imagenet-vgg-verydeep-19.mat (legacy or meta layout)")
    p.add_argument("--quant", default=DEFAULT_QUANT,
                   help="INT8 quantisation file (.npz, keys 'input' and 'filter', 19 "
                   "[position, scale] pairs each); make it with python -m labkit.runtime.calibrate")
    p.add_argument("--image", help="image to classify (any format Pillow reads)")
    p.add_argument("--runs", type=int, default=10,
                   help="how many times to run forward() on the image (each prints its "
                   "inference time and the top-1 class)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to print")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the comparison with the float CPU network (stu_upload/vgg_cpu.py)")
    p.add_argument("--evaluate", metavar="FILE_LIST",
                   help="text file of lines 'image_path label' (label = class index): print "
                   "top-1/top-5 accuracy over it (paths relative to the list's folder)")
    p.add_argument("--demo", action="store_true",
                   help="no weights needed: write a random-weight VGG19 .mat (real layout, "
                   "widths / 8, 1000 classes), a synthetic image, calibrate the quant file on "
                   "synthetic images, and run. Classes are meaningless; it shows the code path")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    return args


def prepare_demo(folder=DEMO_FOLDER):
    """Write the demo weights, image and quant file; returns their paths."""
    from labkit.runtime.fixtures import write_demo_vgg19
    from labkit.runtime.images import make_demo_image, save_rgb
    weights = write_demo_vgg19(folder)
    image = os.path.join(folder, "demo_image.png")
    quant = os.path.join(folder, "demo_vgg19_quant.npz")
    save_rgb(make_demo_image(256, 320), image)
    calib = demo_images(os.path.join(folder, "calib_images"), count=4, seed=100)
    calibrate_vgg19(weights, calib + [image], quant, verbose=False)
    return weights, image, quant


def read_file_list(path):
    """``FILE_LIST`` -> [(image path, label)]: lines "image_path label" (blank lines and
    ``#`` comments skipped; paths relative to the list's folder unless found from the
    current one). Every image must exist; raises UserError naming the line."""
    problem = input_problem(path)
    if problem:
        raise UserError(f"--evaluate: file list {path} {problem} (a text file of lines "
                        f"'image_path label').")
    try:
        with open(path, encoding="utf-8-sig") as f:     # a BOM (a spreadsheet's) is fine
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"--evaluate: cannot read {path} as UTF-8 text (a binary file, or "
                        f"another encoding); it must hold lines 'image_path label'. Save it "
                        f"as UTF-8 text.") from None
    except OSError as exc:
        raise UserError(f"--evaluate: cannot read {path}: {exc.strerror or exc}.") from None
    base = os.path.dirname(os.path.abspath(path))
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
            raise UserError(f"--evaluate: {path} line {number}: {line.strip()!r} is not "
                            f"'image_path label' (label a class index >= 0).")
        image = parts[0]
        if not os.path.isabs(image) and not os.path.exists(image):
            image = os.path.join(base, image)
        if not os.path.lexists(image):
            raise UserError(f"--evaluate: {path} line {number}: image {parts[0]} not found "
                            f"(looked for {os.path.abspath(parts[0])} and {image}).")
        problem = input_problem(image)
        if problem:
            raise UserError(f"--evaluate: {path} line {number}: image {image} {problem}.")
        entries.append((image, int(parts[1])))
    if not entries:
        raise UserError(f"--evaluate: {path} lists no images (lines 'image_path label').")
    return entries


def check_inputs(args):
    """Every path the user gave, checked before the weights load and the runs."""
    from labkit.runtime.images import load_rgb
    from labkit.runtime.matfile import check_weights_path
    if not args.image and not args.evaluate:
        raise UserError("no image given: pass --image PATH or --evaluate FILE_LIST "
                        "(or --demo to run without weights).")
    if args.image:
        load_rgb(args.image)
    if args.evaluate:
        read_file_list(args.evaluate)
    args.weights = check_weights_path(args.weights)
    if os.path.normpath(args.quant) == os.path.normpath(DEFAULT_QUANT):
        args.quant = find_default(args.quant)
    read_quant_pairs(args.quant, args.weights)


def compare_with_cpu(vgg, image, k):
    """Run the float CPU VGG19 on ``image``; print and return the agreement numbers."""
    from labkit.runtime.student import stu
    CpuVGG19 = stu.vgg_cpu.VGG19
    cpu = CpuVGG19(vgg.param_path, type=1, dtype=np.float32, verbose=False)
    cpu.build_model()
    cpu.load_model()
    cpu.load_image(image)
    start = time.time()
    prob_cpu = np.asarray(cpu.forward(), dtype=np.float64).ravel()
    cpu_time = time.time() - start
    prob = np.asarray(vgg.prob, dtype=np.float64)
    top_dlp = list(np.argsort(-prob, kind="stable")[:k])
    top_cpu = list(np.argsort(-prob_cpu, kind="stable")[:k])
    overlap = len(set(top_dlp) & set(top_cpu))
    diff = float(np.max(np.abs(prob - prob_cpu)))
    print("\nComparison with the float32 CPU network (exp 3.1, img2col layers):")
    print(f"  top-1 equal: {'yes' if top_dlp[0] == top_cpu[0] else 'NO'} "
          f"(pycnml {top_dlp[0]}, CPU {top_cpu[0]})")
    print(f"  top-{k} overlap: {overlap}/{k}")
    print(f"  max |prob difference|: {diff:.3g}")
    print(f"  time: pycnml forward {vgg.inference_time:.3f} s, CPU forward {cpu_time:.3f} s "
          f"(ratio {vgg.inference_time / max(cpu_time, 1e-9):.2f})")
    return {"top1_equal": top_dlp[0] == top_cpu[0], "overlap": overlap, "max_diff": diff,
            "time": vgg.inference_time, "cpu_time": cpu_time}


def check_labels(entries, file_list, classes):
    """Every label of the --evaluate list must be a class of the loaded network."""
    for image, label in entries:
        if label >= classes:
            raise UserError(f"--evaluate: {file_list}: label {label} of {image} is not a class "
                            f"of this network ({classes} classes: 0 to {classes - 1}); fix the "
                            f"list or use the weights it was made for.")
    return entries


def evaluate(vgg, file_list, entries):
    """``vgg.evaluate`` on the checked list: the student's method gets a clean copy of it
    (absolute image paths, no BOM, no comments)."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="evaluate_") as folder:
        clean = os.path.join(folder, os.path.basename(file_list))
        with open(clean, "w", encoding="utf-8") as f:
            f.writelines(f"{os.path.abspath(image)} {label}\n" for image, label in entries)
        return vgg.evaluate(clean)


def make_demo(args):
    """--demo: write the demo weights, image and quant file, point ``args`` at them."""
    check_output_dir(DEMO_FOLDER, "--demo")
    args.weights, demo_image, args.quant = prepare_demo()
    args.image = args.image or demo_image
    print("DEMO: random-weight VGG19 (real layout, channel widths / 8, 1000 placeholder "
          "classes) on a synthetic image, quantisation calibrated on synthetic images.\n"
          f"      files in {DEMO_FOLDER}")
