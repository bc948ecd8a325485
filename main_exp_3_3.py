"""Exp 3.3: non-real-time style transfer with hand-written backprop (layer_1/2/3.py,
style_transfer.py).

    python main_exp_3_3.py --content content.jpg --style style.jpg     # real weights in models/
    python main_exp_3_3.py --demo --steps 10                            # no weights needed
    python main_exp_3_3.py --speed-test-only                            # loops vs img2col
"""
import argparse
import glob
import json
import math
import os
import signal
import sys
from contextlib import contextmanager

import numpy as np

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.cli import (DEFAULT_WEIGHTS, NO_LEGACY_FLAG, NO_LEGACY_HELP, UserError,
                                run_main)
from labkit.runtime.colour import COLOUR_MODES

STYLE_DEFAULT = "relu1_1:1,relu2_1:1,relu3_1:1,relu4_1:1,relu5_1:1"
ENGINE_METHODS = ["auto", "img2col", "winograd", "winograd4", "fft"]


def engine_available():
    """The tuned engine (labkit/engine/) is in the repository, not in the student kit."""
    try:
        import labkit.engine.attach  # noqa: F401
    except ImportError:
        return False
    return True


FEATURE_LAYER_NAMES = spec.FEATURE_LAYER_NAMES      # conv1_1 ... pool5


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one UserError line (exit 2)."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


RESUME_FLAGS = {"resume", "steps", "no_progress", "skip_speed_test", "force_memory"}


def build_parser():
    p = _Parser(
        description="Exp 3.3: Gatys-style transfer on the CPU, pure NumPy. Defaults are the "
        "original lab's settings. Outputs go to --output-dir, named <run id>_... "
        "(run id = start time + seed), so runs never overwrite each other: images, "
        "_log.csv, _loss.png, _sheet.png (contact sheet) and _checkpoint.npz (for --resume).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    a("--output-dir", default="output", help="folder for images, CSV log, loss plot, "
      "contact sheet and checkpoint")
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
    has_engine = engine_available()
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


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.explicit = explicit_flags(argv)
    return args


def explicit_flags(argv=None):
    """The destinations of the flags written on the command line (not defaults)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def _finite(name, value, low=None, low_ok=True):
    bad = not math.isfinite(value) or (low is not None and (value < low or
                                                            (value == low and not low_ok)))
    if bad:
        bound = "" if low is None else f" {'>=' if low_ok else '>'} {low:g}"
        raise UserError(f"--{name} {value:g}: must be a finite number{bound}.")


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


def validate(args):
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
        for w in args.style_blend:
            _finite("style-blend", w, 0.0)
        if not sum(args.style_blend) > 0:
            raise UserError("--style-blend: at least one weight must be positive.")
    args.scale_list = parse_scales(args.scales) if args.scales else None
    if args.scale_list and args.steps < len(args.scale_list):
        raise UserError(f"--steps {args.steps} is fewer than the {len(args.scale_list)} "
                        f"scales of --scales; give at least one step per scale.")
    if args.conv != "lab" and not engine_available():
        raise UserError(f"--conv {args.conv} needs the tuned engine (labkit/engine/), which "
                        f"is not part of the student kit; use --conv lab (your own layers).")
    args.style_weights = parse_style_layers(args.style_layers)
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
        if weights[name] < 0:
            raise UserError(f"--style-layers: weight of {name} is negative.")
    if not weights or sum(weights.values()) <= 0:
        raise UserError("--style-layers: give at least one layer with a positive weight.")
    return weights


def speed_test(seed=1234):
    """The original check: loops (type=0) vs img2col (type=1) on one 3x3, 256->256 conv."""
    from labkit.runtime.student import stu
    ConvolutionalLayer = stu.layer_2.ConvolutionalLayer
    rng = np.random.default_rng(seed)
    test_data = rng.random((1, 256, 24, 40))
    test_dloss = rng.random((1, 256, 24, 40))
    test_filter = rng.random((256, 3, 3, 256))
    test_bias = rng.random(256)
    conv = ConvolutionalLayer(3, 256, 256, 1, 1)
    conv.load_param(test_filter, test_bias)
    speedup = ConvolutionalLayer(3, 256, 256, 1, 1, 1)
    speedup.load_param(test_filter, test_bias)
    print("Speed test: 3x3 conv 256->256 on (1, 256, 24, 40), float64 (the loops take a while)")
    out_raw = conv.forward(test_data)
    diff_raw = conv.backward(test_dloss)
    out_fast = speedup.forward(test_data)
    diff_fast = speedup.backward(test_dloss)
    fwd_mse = float(np.mean(np.square(out_raw - out_fast)))
    bwd_mse = float(np.mean(np.square(diff_raw - diff_fast)))
    ok = fwd_mse < 0.003 and bwd_mse < 0.003
    print(f"  forward MSE {fwd_mse:.3g}, backward MSE {bwd_mse:.3g}: "
          f"{'PASS' if ok else 'FAIL'} (threshold 0.003)")
    # img2col's first call also pays one-time costs (page faults, BLAS start-up): time it
    # again, best of 3, as its steady state; each loop call is long enough to be steady
    fast_fwd, fast_bwd = [], []
    for _ in range(3):
        speedup.forward(test_data)
        fast_fwd.append(speedup.get_forward_time())
        speedup.backward(test_dloss)
        fast_bwd.append(speedup.get_backward_time())
    times = [1000 * t for t in (conv.get_forward_time(), min(fast_fwd),
                                conv.get_backward_time(), min(fast_bwd))]
    print(f"  loops:   forward {times[0]:.1f} ms, backward {times[2]:.1f} ms")
    print(f"  img2col: forward {times[1]:.1f} ms, backward {times[3]:.1f} ms (best of 3 "
          f"after the checked call)")
    print(f"CONV FORWARD SPEEDUP RATIO: {times[0] / max(times[1], 1e-9):.1f}")
    print(f"CONV BACKWARD SPEEDUP RATIO: {times[2] / max(times[3], 1e-9):.1f}")
    if not ok:
        raise UserError("speed test: the img2col layer disagrees with the loop layer; fix "
                        "layer_2.py (run its tests) before the style transfer.")
    return times


def prepare_demo(folder, height, width):
    from labkit.runtime.fixtures import write_demo_vgg19
    from labkit.runtime.images import make_demo_image, save_rgb
    weights = write_demo_vgg19(folder, num_classes=10)
    content, style = (os.path.join(folder, f"demo_{n}.png") for n in ("content", "style"))
    save_rgb(make_demo_image(height, width, seed=0), content)
    save_rgb(make_demo_image(height, width, seed=7)[:, ::-1], style)
    return weights, content, style


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


def check_output_dir(folder):
    """Create the output folder and prove it is writable, before any work."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"--output-dir {folder} is a file, not a folder; pass a folder name.")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write_test{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"--output-dir {folder} cannot be created or written "
                        f"({exc.strerror or exc}); pass a folder you can write to.") from None


def check_weights_file(path):
    from labkit.runtime.matfile import missing_file_message
    if not os.path.isfile(path):
        raise UserError(missing_file_message(path) if not os.path.exists(path) else
                        f"--weights {path} is not a file; pass the .mat file's path.")
    if not os.access(path, os.R_OK):
        raise UserError(f"--weights {path} cannot be read (permissions); fix them or copy "
                        f"the file.")


def check_sizes(args, stages, deepest):
    """Every working size and style size must survive VGG19's poolings to ``deepest``."""
    from labkit.runtime.multiscale import min_side
    need = min_side(deepest)
    for _, _, (h, w) in stages:
        for what, (hh, ww) in (("image", (h, w)), ("style image", style_size(args, h, w))):
            if min(hh, ww) < need:
                where = "--height/--width" if what == "image" else "--style-scale"
                if what == "image" and args.scales:
                    where = "--scales"
                raise UserError(
                    f"{where}: the {what} would be {hh}x{ww} pixels, too small for VGG19: "
                    f"the deepest layer used ({deepest}) comes after "
                    f"{need.bit_length() - 1} 2x2 poolings, so each side needs at least "
                    f"{need} pixels.")


def check_memory(args, stages, deepest):
    """Refuse (unless --force-memory) when the memory rule's estimate of the largest stage
    exceeds MemAvailable. Returns (estimate bytes, available bytes or None)."""
    from labkit.runtime.multiscale import estimate_bytes, mem_available
    itemsize = np.dtype(args.dtype).itemsize
    div = 8 if args.demo else 1
    weights = os.path.getsize(args.weights) if os.path.isfile(args.weights) else 0
    need = 0
    for _, _, (h, w) in stages:
        sh, sw = style_size(args, h, w)
        need = max(need, estimate_bytes(h, w, deepest, itemsize, div),
                   estimate_bytes(sh, sw, deepest, itemsize, div, forward_only=True))
    need += 2 * weights                  # reading the file, then the network's copy
    have = mem_available()
    if have is not None and need > have and not args.force_memory:
        h, w = stages[-1][2]
        raise UserError(f"this run needs about {need / 2**30:.3g} GiB by the memory rule "
                        f"(largest image {h}x{w}, {args.dtype}) but {have / 2**30:.3g} GiB is "
                        f"available (MemAvailable); use a smaller --height/--width/--scales "
                        f"or --style-scale, or --force-memory to try anyway.")
    return need, have


class StopSignals:
    """Ctrl-C and SIGTERM both stop the run as KeyboardInterrupt (the driver then saves
    the image, log and checkpoint); inside ``critical()`` (writing files) the stop waits
    until the block ends, so no file is left half-written. ``signum`` is the last signal."""

    def __init__(self):
        self.signum = None
        self.depth = 0
        self.pending = False
        self.old = {}

    def _handler(self, signum, frame):
        self.signum = signum
        if self.depth:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handler)
        except ValueError:        # not the main thread: leave the handlers alone
            self.old = {}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False

    @contextmanager
    def critical(self, drop=False):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0 and self.pending:
                self.pending = False
                if not drop:
                    raise KeyboardInterrupt


def settings_of(args):
    """The run's settings for its checkpoint: the arguments, paths made absolute."""
    out = {k: v for k, v in vars(args).items()
           if k not in ("explicit", "style_weights", "scale_list", "resume", "force_memory")}
    for key in ("content", "weights", "output_dir"):
        if out.get(key):
            out[key] = os.path.abspath(out[key])
    out["style"] = [os.path.abspath(p) for p in (args.style or [])]
    if args.init not in ("content", "noise", "blend"):
        out["init"] = os.path.abspath(args.init)
    return out


def resume_args(args):
    """--resume: the saved run's arguments (+ --steps etc. given now) and its checkpoint."""
    from labkit.runtime.checkpoint import CheckpointError, load_checkpoint, resolve
    try:
        path = resolve(args.resume)
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    other = sorted(args.explicit - RESUME_FLAGS)
    if other:
        raise UserError("--resume continues a run with its saved settings; drop "
                        + ", ".join("--" + n.replace("_", "-") for n in other)
                        + " (allowed with --resume: --steps, --no-progress, "
                          "--skip-speed-test, --force-memory).")
    saved = ckpt["settings"]
    new = build_parser().parse_args([])
    for key, value in saved.items():
        if key != "run_id":
            setattr(new, key, value)
    new.explicit, new.resume, new.force_memory = args.explicit, args.resume, args.force_memory
    new.no_progress, new.skip_speed_test = args.no_progress, args.skip_speed_test
    new.speed_test_only = False
    new.output_dir = os.path.dirname(os.path.abspath(path))
    if "steps" in args.explicit:
        if saved.get("scales") and args.steps != saved["steps"]:
            raise UserError("--steps cannot change when resuming a multi-scale run (the "
                            "steps are split across --scales).")
        new.steps = args.steps
    if ckpt["step"] >= new.steps:
        raise UserError(f"run {saved['run_id']} has already done {ckpt['step']} of its "
                        f"{new.steps} steps; pass --steps with a larger number to go further.")
    ckpt["run_id"], ckpt["path"] = saved["run_id"], path
    return new, ckpt


def main(argv=None, hook=None):
    """The driver; ``hook(step, image, record)`` runs after each step (tests use it)."""
    with StopSignals() as guard:
        try:
            return _main(argv, guard, hook)
        except KeyboardInterrupt:
            if guard.signum == signal.SIGTERM:
                print("terminated (SIGTERM); the current image, log and checkpoint are "
                      "saved.", file=sys.stderr)
                sys.exit(143)
            raise


def _main(argv, guard, hook=None):
    args = parse_args(argv)
    ckpt = None
    if args.resume:
        args, ckpt = resume_args(args)
    validate(args)
    from labkit.runtime.images import load_rgb
    from labkit.runtime.multiscale import schedule
    from labkit.runtime.transfer import deepest_layer
    if args.speed_test_only:
        speed_test(args.seed)
        return 0
    demo = args.demo and ckpt is None
    if not demo and (not args.content or not args.style):
        raise UserError("pass --content PATH and --style PATH (or --demo to run without "
                        "weights and images).")
    n_styles = len(args.style) if args.style else 1
    if args.style_blend is not None and len(args.style_blend) != n_styles:
        raise UserError(f"--style-blend: {len(args.style_blend)} weights for {n_styles} "
                        f"style image(s); give one weight per --style image.")
    if demo:       # the demo's synthetic content: the working aspect, at most 320 pixels
        content_shape = (load_rgb(args.content).shape if args.content else
                         demo_content_shape(args.height, args.width))
    else:          # fail fast on the images, before the weights
        content_rgb = load_rgb(args.content)
        style_rgbs = [load_rgb(p) for p in args.style]
        init_rgb = None if args.init in ("content", "noise", "blend") else load_rgb(args.init)
        content_shape = content_rgb.shape
        check_weights_file(args.weights)
    height, width = working_size(args, content_shape)
    stages = schedule(height, width, args.scale_list, args.steps)
    deepest = deepest_layer([args.content_layer, *args.style_weights])
    check_sizes(args, stages, deepest)
    check_memory(args, stages, deepest)
    check_output_dir(args.output_dir)
    if demo:
        weights, demo_content, demo_style = prepare_demo(
            os.path.join(args.output_dir, "demo"), *content_shape[:2])
        args.weights = weights
        args.content = args.content or demo_content
        args.style = args.style or [demo_style]
        print("DEMO: random-weight VGG19 (real layout, channel widths / 8) and synthetic "
              "images; the result shows the code path works, it is not art.")
        content_rgb = load_rgb(args.content)
        style_rgbs = [load_rgb(p) for p in args.style]
        init_rgb = None if args.init in ("content", "noise", "blend") else load_rgb(args.init)
    if not args.skip_speed_test:
        speed_test(args.seed)
    from labkit.runtime.images import preprocess
    from labkit.runtime.pooling import use_avg_pooling
    from labkit.runtime.transfer import Objective
    from labkit.runtime.student import stu
    VGG19, get_random_img = stu.style_transfer.VGG19, stu.style_transfer.get_random_img
    dtype = np.dtype(args.dtype)
    print(f"Loading {args.weights} ...", flush=True)
    vgg = VGG19(args.weights, dtype=dtype)
    vgg.build_model(last_layer=deepest)
    vgg.init_model()
    vgg.load_model()
    if args.pooling == "avg":
        use_avg_pooling(vgg)        # before tune(): the engine swaps max-pooling layers only
    run = None
    if args.conv != "lab":          # the tuned engine's layers, holding the same weights
        from labkit.engine.attach import tune
        from labkit.engine.perf import reuse_large_allocations
        reuse_large_allocations()
        run = tune(vgg, method=args.conv, need_param_grad=False,
                   keep=[args.content_layer, *args.style_weights])   # outputs the losses read
    mean = vgg.mean_pixel

    def make_objective(h, w):
        content = preprocess(content_rgb, mean, h, w, dtype)
        styles = [preprocess(rgb, mean, *style_size(args, h, w), dtype) for rgb in style_rgbs]
        return Objective(vgg, content, styles, args.content_layer, args.style_weights,
                         args.alpha, args.beta, args.tv_weight,
                         loss_layers=run.loss_layers if run else None,
                         parallel_map=run.parallel_map if run else None,
                         style_blend=args.style_blend)

    rng = np.random.default_rng(args.seed)
    h0, w0 = stages[0][2]
    if ckpt is not None:
        image = ckpt["image"]
        if ckpt["rng_state"]:
            rng.bit_generator.state = ckpt["rng_state"]
    elif args.init == "content":
        image = preprocess(content_rgb, mean, h0, w0, dtype)
    elif args.init in ("noise", "blend"):
        image = get_random_img(preprocess(content_rgb, mean, h0, w0, dtype),
                               1.0 if args.init == "noise" else args.noise, rng)
    else:
        image = preprocess(init_rgb, mean, h0, w0, dtype)
    return run_and_save(args, vgg, make_objective, image, content_rgb,
                        context=run.context if run else None, stages=stages,
                        style_rgbs=style_rgbs, resume=ckpt, rng=rng, guard=guard, hook=hook)


def _labels(args, style_rgbs):
    from labkit.runtime.transfer import normalise_blend
    blend = normalise_blend(args.style_blend, len(style_rgbs))
    return [f"style {i + 1}" + (f" ({b:.2f})" if len(blend) > 1 else "")
            for i, b in enumerate(blend)]


def run_and_save(args, vgg, objective, image, content_rgb, hook=None, context=None,
                 stages=None, style_rgbs=(), resume=None, rng=None, guard=None):
    """Optimise with a progress bar; write <run id>_log.csv, _loss.png, _stepNNNN.jpg and
    _checkpoint.npz every --save-every steps, then _final.jpg, the checkpoint and
    _sheet.png. Ctrl-C / SIGTERM: saves _interrupted_stepNNNN.jpg, the log and the
    checkpoint, then re-raises KeyboardInterrupt; a non-finite loss saves
    _lastgood_stepNNNN.jpg (and removes the images saved after that step), returns 1.

    ``objective``: an Objective, or ``make_objective(h, w)`` for each stage of ``stages``
    ([(start step, steps, (h, w))], multiscale.schedule; default one stage of --steps).
    ``resume``: a loaded checkpoint (+ run_id) to continue from. ``context``: a context
    manager, or a function returning one, to run the steps in (the engine's threads).
    ``hook(step, image, record)`` runs after each step (tests inject failures with it)."""
    from tqdm import tqdm
    from labkit.runtime.checkpoint import SUFFIX, save_checkpoint
    from labkit.runtime.colour import render
    from labkit.runtime.images import save_rgb
    from labkit.runtime.multiscale import resize_bilinear_nchw
    from labkit.runtime.runlog import CsvLog, make_run_id, plot_losses, read_log
    from labkit.runtime.transfer import run_transfer
    guard = guard or StopSignals()
    if stages is None:
        stages = [(0, args.steps, tuple(image.shape[2:]))]
    make = objective if not hasattr(objective, "part_names") else (lambda h, w: objective)
    os.makedirs(args.output_dir, exist_ok=True)
    run_id = resume["run_id"] if resume else make_run_id(args.output_dir, args.seed)
    stem = os.path.join(args.output_dir, run_id)
    settings = {**settings_of(args), "run_id": run_id}
    step = resume["step"] if resume else 0
    opt_state = resume["optimizer_state"] if resume else None
    if resume and args.optimizer == "lbfgs":
        opt_state = None
    total_steps = stages[-1][0] + stages[-1][1]
    kept = read_log(stem + "_log.csv", upto=step) if resume else []
    history = list(kept)
    x = image
    bar = tqdm(total=total_steps, initial=step, unit="step", disable=args.no_progress,
               dynamic_ncols=True)
    def save(img, name):
        path = f"{stem}_{name}.jpg"
        with guard.critical():
            save_rgb(render(img, vgg.mean_pixel, content_rgb, args.preserve_colors), path)
        return path

    def checkpoint(img, at_step, state):
        with guard.critical():
            save_checkpoint(stem + SUFFIX, img, at_step, settings,
                            rng.bit_generator.state if rng is not None else None,
                            state if args.optimizer == "adam" else None)

    lows = -np.asarray(vgg.mean_pixel, np.float64)
    live = {}
    log = None
    result = None
    for start, n, (h, w) in stages:
        if step >= start + n:
            continue
        if step == start:                      # a new stage: fresh Adam at this size
            opt_state = None
            if tuple(x.shape[2:]) != (h, w):
                x = resize_bilinear_nchw(x, h, w)
        obj = make(h, w)
        if log is None:
            log = CsvLog(stem + "_log.csv", obj.part_names(), keep=kept)
            print(f"Run {run_id}: {args.optimizer}, {total_steps} steps, image "
                  + " -> ".join(f"{hh}x{ww}" for _, _, (hh, ww) in stages)
                  + f" {x.dtype}, content {obj.content_layer}, style "
                  + ", ".join(f"{nm}:{wt:.3g}" for nm, wt in obj.style_weights.items())
                  + f", alpha {args.alpha:g}, beta {args.beta:g}, tv {args.tv_weight:g}"
                  + (f"; resumed at step {step}" if resume else ""))

        def on_step(k, img, record):
            log.write(record)
            bar.update(1)
            bar.set_postfix_str(f"loss {record['total']:.4g} content {record['content']:.3g} "
                                f"style {record['style']:.3g} {record['seconds']:.2f}s/step")
            if args.save_every and k % args.save_every == 0 and k < total_steps:
                save(img, f"step{k:04d}")
                checkpoint(img, k, live.get("optimizer"))
            if hook is not None:
                hook(k, img, record)

        ctx = context() if callable(context) else context
        result = run_transfer(obj, x, start + n - step, args.optimizer, args.lr,
                              bounds=(lows, lows + 255.0), on_step=on_step, context=ctx,
                              start_step=step, optimizer_state=opt_state, live=live)
        history += result.history
        if result.status != "done":
            break
        x, step, opt_state = result.image, result.steps, result.optimizer_state
    bar.close()
    log.close()
    with guard.critical(drop=True):
        name = {"done": "final", "interrupted": f"interrupted_step{result.image_step:04d}",
                "nonfinite": f"lastgood_step{result.image_step:04d}"}[result.status]
        if result.status == "nonfinite":      # images saved after the last good one go
            for k in saved_steps(stem):
                if k > result.image_step:
                    os.remove(f"{stem}_step{k:04d}.jpg")
        image_path = save(result.image, name)
        checkpoint(result.image, result.image_step, result.optimizer_state)
        plot_path = plot_losses(history, stem + "_loss.png")
        sheet_path = write_sheet(stem, content_rgb, style_rgbs, _labels(args, style_rgbs)
                                 if style_rgbs else [], history, image_path,
                                 f"{name.split('_')[0]} step {result.image_step}",
                                 f"run {run_id}")
    seconds = [r["seconds"] for r in history[len(kept):]]
    if seconds:
        print(f"Mean step time: {np.mean(seconds):.3f} s over {len(seconds)} steps")
    if history:
        last = history[-1]
        print(f"Last loss: total {last['total']:.6g}, content {last['content']:.6g}, "
              f"style {last['style']:.6g}")
    print(f"Saved {image_path}\n      {log.path}\n      {plot_path}\n      {sheet_path}\n"
          f"      {stem + SUFFIX} (resume with --resume {stem})")
    if result.status == "interrupted":
        print(f"Interrupted after {result.steps} steps; the current image, the log and the "
              f"checkpoint are saved (continue with --resume {stem}).", file=sys.stderr)
        raise KeyboardInterrupt
    if result.status == "nonfinite":
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    return 0


def saved_steps(stem):
    """The steps of the <stem>_stepNNNN.jpg images on disk, in order."""
    paths = glob.glob(glob.escape(stem) + "_step*.jpg")
    return sorted(int(p[len(stem) + 5:-4]) for p in paths if p[len(stem) + 5:-4].isdigit())


def write_sheet(stem, content_rgb, style_rgbs, style_labels, history, end_path, end_label,
                title):
    """<stem>_sheet.png: content, style(s), every saved step image and the end image, each
    labelled with its step and loss (the loss logged for the next step, i.e. of that image;
    for the end image the last logged loss)."""
    from labkit.runtime.images import load_rgb
    from labkit.runtime.runlog import contact_sheet
    losses = {r["step"]: r["total"] for r in history}
    tiles = [(content_rgb, ["content"])]
    tiles += [(rgb, [label]) for rgb, label in zip(style_rgbs, style_labels)]
    for k in saved_steps(stem):
        loss = losses.get(k + 1, losses.get(k))
        tiles.append((load_rgb(f"{stem}_step{k:04d}.jpg"),
                      [f"step {k}", f"loss {loss:.4g}" if loss is not None else ""]))
    last = losses.get(max(losses)) if losses else None
    tiles.append((load_rgb(end_path), [end_label,
                                       f"loss {last:.4g}" if last is not None else ""]))
    return contact_sheet(stem + "_sheet.png", tiles, title=title)


if __name__ == "__main__":
    sys.exit(run_main(main))
