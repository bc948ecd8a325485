"""Exp 3.3: non-real-time style transfer with hand-written backprop (layer_1/2/3.py,
style_transfer.py).

    python main_exp_3_3.py --content content.jpg --style style.jpg     # real weights in models/
    python main_exp_3_3.py --demo --steps 10                            # no weights needed
    python main_exp_3_3.py --speed-test-only                            # loops vs img2col
"""
import argparse
import os
import sys
import time

import numpy as np

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.cli import (DEFAULT_WEIGHTS, NO_LEGACY_FLAG, NO_LEGACY_HELP, UserError,
                                run_main)

STYLE_DEFAULT = "relu1_1:1,relu2_1:1,relu3_1:1,relu4_1:1,relu5_1:1"
ENGINE_METHODS = ["auto", "img2col", "winograd", "winograd4", "fft"]


def engine_available():
    """The tuned engine (labkit/engine/) is in the repository, not in the student kit."""
    try:
        import labkit.engine.attach  # noqa: F401
    except ImportError:
        return False
    return True


FEATURE_LAYER_NAMES = spec.FILE_LAYER_NAMES[:37]      # conv1_1 ... pool5


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Exp 3.3: Gatys-style transfer on the CPU, pure NumPy. Defaults are the "
        "original lab's settings. Outputs go to --output-dir, named <run id>_... "
        "(run id = start time + seed), so runs never overwrite each other.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a(NO_LEGACY_FLAG, action="store_true", help=NO_LEGACY_HELP)
    a("--weights", default=DEFAULT_WEIGHTS, help="MatConvNet imagenet-vgg-verydeep-19.mat")
    a("--content", help="content image (any format Pillow reads)")
    a("--style", help="style image (resized to the content's size)")
    a("--output-dir", default="output", help="folder for images, CSV log and loss plot")
    a("--height", type=int, default=192, help="working height in pixels")
    a("--width", type=int, default=320, help="working width in pixels")
    a("--max-side", type=int, help="instead of --height/--width: keep the content's aspect "
      "ratio with its longer side this many pixels")
    a("--steps", type=int, default=100, help="Adam steps or L-BFGS iterations")
    a("--lr", type=float, default=1.0, help="Adam learning rate (pixel units)")
    a("--alpha", type=float, default=1.0, help="content loss weight")
    a("--beta", type=float, default=500.0, help="style loss weight")
    a("--content-layer", default="relu4_2", help="layer of the content loss")
    a("--style-layers", default=STYLE_DEFAULT, help="style layers as name:weight,... (a bare "
      "name weighs 1); the weights are normalised to sum to 1")
    a("--init", default="blend", help="start image: content, noise (U(-20,20)), blend "
      "(--noise * noise + (1 - --noise) * content) or an image PATH")
    a("--noise", type=float, default=0.5, help="noise ratio of --init blend")
    a("--seed", type=int, default=1234, help="random seed (start noise, speed test)")
    a("--optimizer", choices=["adam", "lbfgs"], default="adam",
      help="adam = handout eq. 3.17; lbfgs = SciPy L-BFGS-B on the float64 image, pixels "
      "bounded to the valid range")
    a("--tv-weight", type=float, default=0.0, help="total-variation loss weight (0 = none, "
      "as the original); TV = mean squared difference of neighbouring pixels, in pixel "
      "units; raise it until the noise is gone")
    a("--preserve-colors", action="store_true", help="keep the content's colours: output "
      "luminance with the content's chroma (YCbCr), applied to the saved images")
    a("--save-every", type=int, default=10, help="save an intermediate image every N steps "
      "(0 = only the final image)")
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
    args = p.parse_args(argv)
    for name in ("height", "width", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_side is not None and args.max_side < 16:
        p.error("--max-side must be at least 16")
    if not 0 <= args.noise <= 1:
        p.error("--noise must be between 0 and 1")
    if args.save_every < 0:
        p.error("--save-every must be 0 or more")
    if args.conv != "lab" and not has_engine:
        p.error(f"--conv {args.conv} needs the tuned engine (labkit/engine/), which is not "
                f"part of the student kit; use --conv lab (your own layers)")
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


def working_size(args, content_rgb):
    if args.max_side is None:
        return args.height, args.width
    h, w = content_rgb.shape[:2]
    scale = args.max_side / max(h, w)
    return max(16, round(h * scale)), max(16, round(w * scale))


def main(argv=None):
    args = parse_args(argv)
    if args.demo:
        args.weights, demo_content, demo_style = prepare_demo(
            os.path.join(args.output_dir, "demo"), args.height, args.width)
        args.content, args.style = args.content or demo_content, args.style or demo_style
        print("DEMO: random-weight VGG19 (real layout, channel widths / 8) and synthetic "
              "images; the result shows the code path works, it is not art.")
    if not args.skip_speed_test:
        speed_test(args.seed)
    if args.speed_test_only:
        return 0
    if not args.content or not args.style:
        raise UserError("pass --content PATH and --style PATH (or --demo to run without "
                        "weights and images).")
    from labkit.runtime.images import load_rgb, preprocess
    from labkit.runtime.transfer import Objective, deepest_layer
    from labkit.runtime.student import stu
    VGG19, get_random_img = stu.style_transfer.VGG19, stu.style_transfer.get_random_img
    style_weights = parse_style_layers(args.style_layers)
    if args.content_layer not in FEATURE_LAYER_NAMES:
        raise UserError(f"--content-layer: unknown layer '{args.content_layer}'.")
    content_rgb, style_rgb = load_rgb(args.content), load_rgb(args.style)   # fail fast
    init_rgb = None if args.init in ("content", "noise", "blend") else load_rgb(args.init)
    height, width = working_size(args, content_rgb)
    dtype = np.dtype(args.dtype)
    print(f"Loading {args.weights} ...", flush=True)
    vgg = VGG19(args.weights, dtype=dtype)
    vgg.build_model(last_layer=deepest_layer([args.content_layer, *style_weights]))
    vgg.init_model()
    vgg.load_model()
    run = None
    if args.conv != "lab":          # the tuned engine's layers, holding the same weights
        from labkit.engine.attach import tune
        from labkit.engine.perf import reuse_large_allocations
        reuse_large_allocations()
        run = tune(vgg, method=args.conv, need_param_grad=False)
    mean = vgg.mean_pixel
    content = preprocess(content_rgb, mean, height, width, dtype)
    style = preprocess(style_rgb, mean, height, width, dtype)
    rng = np.random.default_rng(args.seed)
    if args.init == "content":
        image = content.copy()
    elif args.init in ("noise", "blend"):
        image = get_random_img(content, 1.0 if args.init == "noise" else args.noise, rng)
    else:
        image = preprocess(init_rgb, mean, height, width, dtype)
    objective = Objective(vgg, content, style, args.content_layer, style_weights,
                          args.alpha, args.beta, args.tv_weight,
                          parallel_map=run.parallel_map if run else None)
    return run_and_save(args, vgg, objective, image, content_rgb,
                        context=run.context() if run else None)


def run_and_save(args, vgg, objective, image, content_rgb, hook=None, context=None):
    """Optimise with a progress bar; write <run id>_log.csv, _loss.png, _stepNNNN.jpg every
    --save-every steps and _final.jpg. Ctrl-C saves _interrupted_stepNNNN.jpg and the log,
    then re-raises (exit 130); a non-finite loss saves _lastgood_stepNNNN.jpg, returns 1.
    ``hook(step, image, record)`` runs after each step (tests inject failures with it)."""
    from tqdm import tqdm
    from labkit.runtime.runlog import CsvLog, make_run_id, plot_losses, preserve_colors
    from labkit.runtime.transfer import run_transfer
    os.makedirs(args.output_dir, exist_ok=True)
    run_id = make_run_id(args.output_dir, args.seed)
    stem = os.path.join(args.output_dir, run_id)
    log = CsvLog(stem + "_log.csv", objective.part_names())
    print(f"Run {run_id}: {args.optimizer}, {args.steps} steps, image {image.shape[2]}x"
          f"{image.shape[3]} {image.dtype}, content {objective.content_layer}, style "
          + ", ".join(f"{n}:{w:.3g}" for n, w in objective.style_weights.items())
          + f", alpha {args.alpha:g}, beta {args.beta:g}, tv {args.tv_weight:g}")
    bar = tqdm(total=args.steps, unit="step", disable=args.no_progress, dynamic_ncols=True)

    def save(img, name):
        path = f"{stem}_{name}.jpg"
        rgb = vgg.save_image(img, (img.shape[2], img.shape[3], 3), path)
        if args.preserve_colors:
            from labkit.runtime.images import save_rgb
            save_rgb(preserve_colors(content_rgb, rgb), path)
        return path

    def on_step(step, img, record):
        log.write(record)
        bar.update(1)
        bar.set_postfix_str(f"loss {record['total']:.4g} content {record['content']:.3g} "
                            f"style {record['style']:.3g} {record['seconds']:.2f}s/step")
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            save(img, f"step{step:04d}")
        if hook is not None:
            hook(step, img, record)

    lows = -np.asarray(vgg.mean_pixel, np.float64)
    result = run_transfer(objective, image, args.steps, args.optimizer, args.lr,
                          bounds=(lows, lows + 255.0), on_step=on_step, context=context)
    bar.close()
    log.close()
    name = {"done": "final", "interrupted": f"interrupted_step{result.image_step:04d}",
            "nonfinite": f"lastgood_step{result.image_step:04d}"}[result.status]
    image_path = save(result.image, name)
    plot_path = plot_losses(result.history, stem + "_loss.png")
    seconds = [r["seconds"] for r in result.history]
    if seconds:
        print(f"Mean step time: {np.mean(seconds):.3f} s over {len(seconds)} steps "
              f"({objective.evaluations} loss evaluations)")
    if result.history:
        last = result.history[-1]
        print(f"Last loss: total {last['total']:.6g}, content {last['content']:.6g}, "
              f"style {last['style']:.6g}")
    print(f"Saved {image_path}\n      {log.path}\n      {plot_path}")
    if result.status == "interrupted":
        print(f"Interrupted after {result.steps} steps; the current image and the log "
              f"are saved.", file=sys.stderr)
        raise KeyboardInterrupt
    if result.status == "nonfinite":
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
