"""Exp 3.1's command line (not a student file): the options of ``main_exp_3_1.py``, the demo's
files and the input checks (every path the user gave, before the weights load: UserError,
exit 2, one message).
"""
import os

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.cli import (DEFAULT_WEIGHTS, NO_LEGACY_FLAG, NO_LEGACY_HELP, LabParser,
                                UserError, check_output_dir, check_output_path,
                                default_output_dir)


def parse_args(argv=None, has_engine=False):
    """The options; ``has_engine``: the tuned engine (labkit/engine/, not in the student kit)
    is there (the driver tells: labkit.runtime never imports it)."""
    p = LabParser(
        prog="python main_exp_3_1.py",
        description="Exp 3.1: VGG19 image classification on the CPU, pure NumPy.")
    p.add_argument(NO_LEGACY_FLAG, action="store_true", help=NO_LEGACY_HELP)
    p.add_argument("--weights", default=DEFAULT_WEIGHTS,
                   help=f"MatConvNet {spec.REAL_FILE_NAME} (legacy or meta layout)")
    p.add_argument("--image", help="image to classify (any format Pillow reads: JPEG, PNG, "
                   "grey, RGBA, palette, 16-bit...)")
    p.add_argument("--layers", choices=["fast", "raw", "tuned"], default="fast",
                   help="fast = your img2col convolution and vectorised pooling; raw = the "
                   "plain loops (minutes on the real network); tuned = your network with the "
                   "tuned engine's layers swapped in (img2col or Winograd per layer; "
                   "labkit/engine/ of the course repository, not part of the student kit)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to print")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="arithmetic precision")
    p.add_argument("--check-pool5", metavar="REF.npy",
                   help="compare pool5 with a stored dump (1, 512, 7, 7); passes at MSE < 0.003")
    p.add_argument("--dump-pool5", metavar="OUT.npy", help="save pool5 to this .npy file")
    p.add_argument("--download", action="store_true",
                   help="download the real weights to --weights if missing (progress bar, "
                   "MD5 check); needs internet")
    p.add_argument("--demo", action="store_true",
                   help="no weights needed: build a small random-weight VGG19 .mat (same file "
                   "layout, widths / 8) and a synthetic image, and classify it. Its classes are "
                   "meaningless; it shows the code path works")
    p.add_argument("--quiet", action="store_true", help="no per-layer progress")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    if args.layers == "tuned" and not has_engine:
        p.error("--layers tuned needs the tuned engine (labkit/engine/), which is not part "
                    "of the student kit; use --layers fast (your img2col layers)")
    return args


def prepare_demo(folder):
    from labkit.runtime.fixtures import write_demo_vgg19
    from labkit.runtime.images import make_demo_image, save_rgb
    image = os.path.join(folder, "demo_image.png")
    save_rgb(make_demo_image(256, 320), image)
    return write_demo_vgg19(folder), image


def check_inputs(args):
    """Every path the user gave, checked before the weights load (seconds) and the
    inference (seconds to minutes): a bad one stops the run here with one message."""
    from labkit.runtime.images import load_rgb
    from labkit.runtime.matfile import check_weights_path
    from labkit.runtime.npyfile import read_pool5
    if not args.image:
        raise UserError("no image given: pass --image PATH (or --demo to run without weights).")
    load_rgb(args.image)                    # missing, a folder, not an image: ImageLoadError
    args.weights = check_weights_path(args.weights, download=args.download)
    reference = read_pool5(args.check_pool5) if args.check_pool5 else None
    if args.dump_pool5:
        check_output_path(args.dump_pool5, "--dump-pool5")
    return reference


def make_demo(args):
    """--demo: write the random-weight VGG19 and the synthetic image, point ``args`` at them."""
    folder = os.path.join(default_output_dir(), "demo")
    check_output_dir(folder, "--demo")
    args.weights, demo_image = prepare_demo(folder)
    args.image = args.image or demo_image
    print("DEMO: random-weight VGG19 (real layout, channel widths / 8) on a synthetic "
          "image; the class names are placeholders.\n"
          f"      files in {folder}")
