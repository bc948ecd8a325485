"""Exp 3.3's command line (not a student file): the options of ``main_exp_3_3.py`` with the
original lab's defaults, their checks (every number before any slow work: UserError, exit 2,
one message) and the sizes they imply. ``read_command_line(argv)`` is what the driver calls.
"""
import argparse
import math
import os

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.cli import (DEFAULT_WEIGHTS, NO_LEGACY_FLAG, NO_LEGACY_HELP, LabParser,
                                UserError, check_number, default_output_dir,
                                normalised_weights)
from labkit.runtime.colour import COLOUR_MODES

STYLE_DEFAULT = "relu1_1:1,relu2_1:1,relu3_1:1,relu4_1:1,relu5_1:1"
ENGINE_METHODS = ["auto", "img2col", "winograd", "winograd4", "fft"]
FEATURE_LAYER_NAMES = spec.FEATURE_LAYER_NAMES      # conv1_1 ... pool5
# the flags that may be given with --resume (everything else comes from the checkpoint)
RESUME_FLAGS = {"resume", "steps", "no_progress", "skip_speed_test", "force_memory"}
START_IMAGES = ("content", "noise", "blend")


FEATURE_LAYER_NAMES = spec.FEATURE_LAYER_NAMES      # conv1_1 ... pool5


def build_parser(has_engine=False):
    """The parser; ``has_engine``: the tuned engine (labkit/engine/, in the course repository,
    not in the student kit) is there, so --conv defaults to auto (the driver tells)."""
    p = LabParser(
        prog="main_exp_3_3.py",
        description="Exp 3.3: Gatys-style transfer on the CPU, pure NumPy. Defaults are the "
        "original lab's settings. Outputs go to --output-dir, named <run id>_... "
        "(run id = start time + seed), so runs never overwrite each other: images, "
        "_log.csv, _loss.png, _sheet.png (contact sheet) and _checkpoint.npz (for --resume).")
    a = p.add_argument
    a(NO_LEGACY_FLAG, action="store_true", help=NO_LEGACY_HELP)
    a("--weights", default=DEFAULT_WEIGHTS, help="MatConvNet imagenet-vgg-verydeep-19.mat")
    a("--content", help="content image (any format Pillow reads)")
    a("--style", nargs="+", help="style image(s), resized to the content's working size "
      "(times --style-scale); several images are blended (--style-blend)")
    a("--style-blend", nargs="+", type=float, metavar="W", help="one weight per --style "
      "image, normalised to sum to 1 (default: equal); each layer's style target is the "
      "blend of the images' Gram matrices")
    a("--style-scale", type=float, default=1.0, help="resize the style image(s) to this "
      "times the content's working size before their Gram matrices are taken (> 1: larger "
      "brush strokes relative to the image, < 1: finer); the Gram targets are rescaled to "
      "per-pixel statistics")
    a("--pooling", choices=["max", "avg"], default="max", help="VGG19's pooling layers: "
      "max (the lab's) or avg (average pooling, as Gatys et al.)")
    a("--scales", metavar="S1,S2,...", help="multi-scale, coarse to fine: the longer side of "
      "the image at each stage (e.g. 256,384,512; aspect ratio from --height/--width or "
      "--max-side); the result of each stage is upsampled (bilinear) to start the next, "
      "and the final image has the last scale's size. Step split: --steps divided equally, "
      "the remainder to the finest scales (100 over 3 -> 33,33,34); Adam restarts at each "
      "scale. Memory is checked for the largest")
    a("--output-dir", default=default_output_dir(), help="folder for images, CSV log, "
      "loss plot, contact sheet and checkpoint (default: ./output where the current folder "
      "has one, else the repository's output/, as exp 3.1 and 3.2)")
    a("--height", type=int, default=192, help="working height in pixels")
    a("--width", type=int, default=320, help="working width in pixels")
    a("--max-side", type=int, help="instead of --height/--width: keep the content's aspect "
      "ratio with its longer side this many pixels")
    a("--steps", type=int, default=100, help="Adam steps or L-BFGS iterations (all scales "
      "together)")
    a("--lr", type=float, default=1.0, help="Adam learning rate (pixel units)")
    a("--alpha", type=float, default=1.0, help="content loss weight")
    a("--beta", type=float, default=500.0, help="style loss weight")
    a("--content-layer", default="relu4_2", help="layer of the content loss")
    a("--style-layers", default=STYLE_DEFAULT, help="style layers as name:weight,... (a bare "
      "name weighs 1); the weights are normalised to sum to 1")
    a("--init", default="blend", help="start image: content, noise (U(-20,20)), blend "
      "(--noise * noise + (1 - --noise) * content) or an image PATH")
    a("--noise", type=float, default=0.5, help="noise ratio of --init blend")
    a("--seed", type=int, default=1234, help="random seed (start noise, speed test), >= 0")
    a("--optimizer", choices=["adam", "lbfgs"], default="adam",
      help="adam = handout eq. 3.17; lbfgs = SciPy L-BFGS-B on the float64 image, pixels "
      "bounded to the valid range")
    a("--tv-weight", type=float, default=0.0, help="total-variation loss weight (0 = none, "
      "as the original); TV = mean squared difference of neighbouring pixels, in pixel "
      "units; raise it until the noise is gone")
    a("--preserve-colors", nargs="?", const="luminance", choices=COLOUR_MODES, default=None,
      help="keep the content's colours on every saved image: luminance (the flag alone) = "
      "the output's luminance with the content's chroma (YCbCr); histogram = each RGB "
      "channel's histogram matched exactly to the content's (RGB because that is what is "
      "saved: the saved channels then have the content's histograms)")
    a("--save-every", type=int, default=10, help="save an intermediate image and the "
      "checkpoint every N steps (0 = only at the end)")
    a("--resume", metavar="OUTPUT_DIR/RUN_ID", help="continue a run from its checkpoint "
      "(OUTPUT_DIR/RUN_ID, i.e. the file names' part before '_final.jpg', or the "
      "_checkpoint.npz file) with its saved settings; only --steps (to go further; not with "
      "--scales), --no-progress, --skip-speed-test and --force-memory may be given with it. "
      "Adam resumes exactly (same final image as one uninterrupted run); L-BFGS restarts "
      "its history from the saved image")
    a("--force-memory", action="store_true", help="start even when the memory rule's "
      "estimate exceeds the available memory (MemAvailable)")
    a("--dtype", choices=["float32", "float64"], default="float32", help="arithmetic precision")
    a("--conv", choices=["lab"] + ENGINE_METHODS, default="auto" if has_engine else "lab",
      help="convolution and pooling layers of the transfer: lab = your own layers of "
      "layer_2.py, untouched; auto = the tuned engine's fastest per layer (tuned img2col or "
      "Winograd), or force one. The tuned engine lives in labkit/engine/ of the course "
      "repository and is not part of the student kit" + ("" if has_engine else
                                                         " (not found here: lab only)"))
    a("--skip-speed-test", action="store_true", help="skip the loops-vs-img2col speed test")
    a("--speed-test-only", action="store_true", help="run only the speed test")
    a("--demo", action="store_true", help="no weights needed: a small random-weight VGG19 "
      "(real file layout, widths / 8) and synthetic images. Shows the code path, not art")
    a("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv=None, has_engine=False):
    args = build_parser(has_engine).parse_args(argv)
    args.explicit = explicit_flags(argv)
    return args


def explicit_flags(argv=None):
    """The destinations of the flags written on the command line (not defaults)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))



def _finite(name, value, low=None, low_ok=True, high=None):
    check_number(value, f"--{name}", low=low, low_ok=low_ok, high=high)


def parse_scales(text):
    """'256,384,512' -> [256, 384, 512]."""
    try:
        scales = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--scales {text}: give whole numbers separated by commas, e.g. "
                        f"256,384,512.") from None
    if not scales or min(scales) < 1:
        raise UserError(f"--scales {text}: give positive sizes, e.g. 256,384,512.")
    return scales


def validate(args, has_engine=False):
    """Every numeric flag, before any slow work (UserError: exit 2, one message)."""
    for name in ("height", "width", "steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)}: must be at least 1.")
    if args.max_side is not None and args.max_side < 16:
        raise UserError(f"--max-side {args.max_side}: must be at least 16.")
    if not (math.isfinite(args.noise) and 0 <= args.noise <= 1):
        raise UserError(f"--noise {args.noise:g}: must be between 0 and 1.")
    if args.save_every < 0:
        raise UserError(f"--save-every {args.save_every}: must be 0 or more.")
    _finite("lr", args.lr, 0.0, low_ok=False)
    _finite("tv-weight", args.tv_weight, 0.0)
    _finite("alpha", args.alpha, 0.0)
    _finite("beta", args.beta, 0.0)
    _finite("style-scale", args.style_scale, 0.0, low_ok=False)
    if not 0 <= args.seed < 2 ** 63:
        raise UserError(f"--seed {args.seed}: must be a whole number from 0 to 2^63 - 1.")
    styles = args.style or []
    if args.style_blend is not None:
        if styles and len(args.style_blend) != len(styles):
            raise UserError(f"--style-blend: {len(args.style_blend)} weights for "
                            f"{len(styles)} style images; give one weight per --style image.")
        # normalised here, safely (no overflowing sum): the run uses these
        args.style_blend = normalised_weights(
            args.style_blend, "--style-blend",
            [f"style image {i + 1}" for i in range(len(args.style_blend))])
    args.scale_list = parse_scales(args.scales) if args.scales else None
    if args.scale_list and args.steps < len(args.scale_list):
        raise UserError(f"--steps {args.steps} is fewer than the {len(args.scale_list)} "
                        f"scales of --scales; give at least one step per scale.")
    if args.conv != "lab" and not has_engine:
        raise UserError(f"--conv {args.conv} needs the tuned engine (labkit/engine/), which "
                        f"is not part of the student kit; use --conv lab (your own layers).")
    raw = parse_style_layers(args.style_layers)
    args.style_weights = dict(zip(raw, normalised_weights(list(raw.values()),
                                                          "--style-layers", list(raw))))
    if args.content_layer not in FEATURE_LAYER_NAMES:
        raise UserError(f"--content-layer: unknown layer '{args.content_layer}'; use names "
                        f"such as relu4_2.")
    return args


def parse_style_layers(text):
    """'relu1_1:1,relu2_1:0.5' -> {'relu1_1': 1.0, 'relu2_1': 0.5}."""
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, w = item.partition(":")
        if name not in FEATURE_LAYER_NAMES:
            raise UserError(f"--style-layers: unknown layer '{name}'; use names such as "
                            f"relu1_1, relu2_1 ... relu5_4.")
        try:
            weights[name] = float(w) if w else 1.0
        except ValueError:
            raise UserError(f"--style-layers: weight '{w}' of {name} is not a number.") from None
    if not weights:
        raise UserError("--style-layers: give at least one layer with a positive weight.")
    normalised_weights(list(weights.values()), "--style-layers", list(weights))
    return weights



def demo_content_shape(height, width, longest=320):
    """The demo content picture's size: the working aspect ratio, longer side <= 320."""
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def working_size(args, content_shape):
    if args.max_side is None:
        return args.height, args.width
    h, w = content_shape[:2]
    scale = args.max_side / max(h, w)
    return max(16, round(h * scale)), max(16, round(w * scale))


def style_size(args, height, width):
    """The style images' size at a working size: --style-scale times it."""
    return max(1, round(args.style_scale * height)), max(1, round(args.style_scale * width))




def settings_of(args):
    """The run's settings for its checkpoint: the arguments, paths made absolute."""
    out = {k: v for k, v in vars(args).items()
           if k not in ("explicit", "style_weights", "scale_list", "resume", "force_memory")}
    for key in ("content", "weights", "output_dir"):
        if out.get(key):
            out[key] = os.path.abspath(out[key])
    out["style"] = [os.path.abspath(p) for p in (args.style or [])]
    if args.init not in START_IMAGES:
        out["init"] = os.path.abspath(args.init)
    return out




def read_command_line(argv=None, has_engine=False):
    """The run's options: parsed, with a checkpoint's settings under --resume
    (``transfer_run.resume_args``), every number checked. Returns (args, checkpoint or None)."""
    args = parse_args(argv, has_engine)
    ckpt = None
    if args.resume:
        from labkit.runtime.transfer_run import resume_args
        args, ckpt = resume_args(args)
    return validate(args, has_engine), ckpt
