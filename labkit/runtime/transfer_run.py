"""Running exp 3.3's transfer (not a student file): the demo's inputs, the tuned engine under
the student's network, the objective of each stage, the start image, and ``run_and_save``:
the optimisation with a progress bar, the log, intermediate images, checkpoints (exact
``--resume``), Ctrl-C/SIGTERM and a diverging loss handled, and the contact sheet.
"""
import os
import sys

import numpy as np

from labkit.runtime.cli import UserError
from labkit.runtime.signals import StopSignals
from labkit.runtime.transfer_options import (RESUME_FLAGS, START_IMAGES, build_parser,
                                              settings_of, style_size)
from labkit.runtime.transfer_sheet import saved_steps, style_labels, write_sheet


def prepare_demo(folder, height, width):
    from labkit.runtime.fixtures import write_demo_vgg19
    from labkit.runtime.images import make_demo_image, save_rgb
    weights = write_demo_vgg19(folder, num_classes=10)
    content, style = (os.path.join(folder, f"demo_{n}.png") for n in ("content", "style"))
    save_rgb(make_demo_image(height, width, seed=0), content)
    save_rgb(make_demo_image(height, width, seed=7)[:, ::-1], style)
    return weights, content, style




def make_demo_inputs(args, inputs):
    """--demo: write the random-weight VGG19 and the synthetic pictures (after every check
    passed), point ``args`` at them and read them into ``inputs``."""
    from labkit.runtime.images import load_rgb
    weights, content, style = prepare_demo(os.path.join(args.output_dir, "demo"),
                                           *inputs.content_shape[:2])
    args.weights = weights
    args.content = args.content or content
    args.style = args.style or [style]
    print("DEMO: random-weight VGG19 (real layout, channel widths / 8) and synthetic "
          "images; the result shows the code path works, it is not art.")
    inputs.content_rgb = load_rgb(args.content)
    inputs.style_rgbs = [load_rgb(p) for p in args.style]
    if args.init not in START_IMAGES:
        inputs.init_rgb = load_rgb(args.init)


def attach_engine(vgg, args, tune_for_transfer=None):
    """--pooling avg swaps the pooling layers; --conv other than lab puts the tuned engine's
    layers (the same weights) under the student's network with ``tune_for_transfer`` (the
    engine's, which the driver imports where the engine exists). Returns the engine's run
    object (loss layers, threads) or None."""
    from labkit.runtime.pooling import use_avg_pooling
    if args.pooling == "avg":
        use_avg_pooling(vgg)        # before tune(): the engine swaps max-pooling layers only
    if args.conv == "lab" or tune_for_transfer is None:
        return None
    return tune_for_transfer(vgg, args.conv, keep=[args.content_layer, *args.style_weights])


def objective_maker(args, vgg, inputs, engine=None):
    """``make(h, w)``: the Objective (content and style targets, loss layers) at a working
    size: the content at h x w, the style image(s) at --style-scale times it."""
    from labkit.runtime.images import preprocess
    from labkit.runtime.transfer import Objective
    dtype, mean = np.dtype(args.dtype), vgg.mean_pixel

    def make(h, w):
        content = preprocess(inputs.content_rgb, mean, h, w, dtype)
        styles = [preprocess(rgb, mean, *style_size(args, h, w), dtype)
                  for rgb in inputs.style_rgbs]
        return Objective(vgg, content, styles, args.content_layer, args.style_weights,
                         args.alpha, args.beta, args.tv_weight,
                         loss_layers=engine.loss_layers if engine else None,
                         style_blend=args.style_blend)
    return make


def start_image(args, vgg, inputs, get_random_img, ckpt=None):
    """The first stage's start image and the run's random generator: the checkpoint's image
    (--resume), the content, get_random_img's noise blend (the original's start), or a
    picture (--init PATH)."""
    from labkit.runtime.images import preprocess
    dtype, mean = np.dtype(args.dtype), vgg.mean_pixel
    rng = np.random.default_rng(args.seed)
    h0, w0 = inputs.stages[0][2]
    if ckpt is not None:
        if ckpt["rng_state"]:
            rng.bit_generator.state = ckpt["rng_state"]
        return ckpt["image"], rng
    if args.init in START_IMAGES:
        content = preprocess(inputs.content_rgb, mean, h0, w0, dtype)
        if args.init == "content":
            return content, rng
        return get_random_img(content, 1.0 if args.init == "noise" else args.noise, rng), rng
    return preprocess(inputs.init_rgb, mean, h0, w0, dtype), rng


def resume_args(args):
    """--resume: the saved run's arguments (+ --steps etc. given now) and its checkpoint."""
    from labkit.runtime.checkpoint import CheckpointError, load_checkpoint, resolve
    try:
        path = resolve(args.resume)
        ckpt = load_checkpoint(path, parser=build_parser())   # every field, every setting
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
    dtype = np.dtype(new.dtype)                  # the run's precision, whatever was stored
    ckpt["image"] = ckpt["image"].astype(dtype, copy=False)
    if ckpt["optimizer_state"] is not None:
        for key in ("mt", "vt"):
            ckpt["optimizer_state"][key] = ckpt["optimizer_state"][key].astype(dtype,
                                                                                copy=False)
    return new, ckpt


def read_kept_log(path, step):
    """A resumed run's log rows up to the checkpoint's step; the log is optional (a
    checkpoint copied alone resumes with a new log, and says so) and read tolerantly
    (``runlog.read_log``: a BOM, semicolons, stray lines)."""
    from labkit.runtime.cli import input_problem
    from labkit.runtime.runlog import read_log
    problem = input_problem(path)
    if problem and not problem.startswith("is empty"):
        print(f"warning: the run's log {path} {problem}; the resumed run starts a new log "
              f"(the steps before {step} are not in it).", file=sys.stderr)
        return []
    if problem:
        return []
    return read_log(path, upto=step)


def after_last_step(obj, result, previous, context=None):
    """A finished Adam run's last update is never evaluated by the loop (each step's loss
    is of the image before its update): evaluate the final image once, so a run that
    diverged on its last step ends as "nonfinite" with the image before it (``previous``:
    (step, image, Adam state) of the last image whose loss was finite), never as "done"
    with a NaN/inf image or checkpoint."""
    import contextlib
    x = result.image
    ok = bool(np.all(np.isfinite(x)))
    state = result.optimizer_state
    if ok and state is not None:
        ok = all(bool(np.all(np.isfinite(state[k]))) for k in ("mt", "vt"))
    total = float("nan")
    if ok:
        ctx = context() if callable(context) else contextlib.nullcontext()
        with ctx, np.errstate(over="ignore", invalid="ignore"):
            total, grad, _ = obj(x)
        ok = bool(np.isfinite(total) and np.all(np.isfinite(grad)))
    if ok or previous is None:
        return result
    step, image, state = previous
    result.message = (f"the {'loss' if np.all(np.isfinite(x)) else 'image'} was not finite "
                      f"after the last step ({result.steps}); stopped and kept the last image "
                      f"with a finite loss (after step {step}). Lower --lr or the loss "
                      f"weights.")
    result.status, result.image, result.image_step = "nonfinite", image, step
    result.optimizer_state = state
    return result




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
    from labkit.runtime.runlog import CsvLog, make_run_id, plot_losses
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
    kept = read_kept_log(stem + "_log.csv", step) if resume else []
    history = list(kept)
    x = image
    bar = None              # made after the run's header line: the bar never swallows it
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
    previous = []           # (step, image, Adam state) of the last two steps
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
                  + (f"; resumed at step {step}" if resume else ""), flush=True)
            bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                       disable=args.no_progress or not _on_terminal(sys.stderr))

        def on_step(k, img, record):
            previous.append((k, img, live.get("optimizer")))
            del previous[:-2]
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
        # a diverging run is reported once, as "nonfinite" (below), not by NumPy's warnings
        with np.errstate(over="ignore", invalid="ignore"):
            result = run_transfer(obj, x, start + n - step, args.optimizer, args.lr,
                                  bounds=(lows, lows + 255.0), on_step=on_step, context=ctx,
                                  start_step=step, optimizer_state=opt_state, live=live)
        history += result.history
        if result.status == "done" and args.optimizer == "adam" and start + n == total_steps:
            # the image before the last update: the previous step's, or this stage's start
            before = (previous[-2] if len(previous) > 1 and previous[-2][0] > step else
                      (step, x, opt_state))
            result = after_last_step(obj, result, before, context)
        if result.status != "done":
            break
        x, step, opt_state = result.image, result.steps, result.optimizer_state
    if bar is not None:
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
        labels = style_labels(args.style_blend, len(style_rgbs)) if style_rgbs else []
        sheet_path = write_sheet(stem, content_rgb, style_rgbs, labels, history, image_path,
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


def _on_terminal(stream):
    """A progress bar only on a terminal: a redirected log gets no carriage returns."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
