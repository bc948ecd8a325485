"""Exp 3.3's input checks (not a student file): every file, folder and size a run uses is
checked before any slow work (the speed test, loading the weights, the transfer); a bad one
is a UserError (exit 2, one message naming the flag). ``check_inputs`` is what the driver
calls; it reads the images once and hands them on.
"""
import os
from types import SimpleNamespace

import numpy as np

from labkit.runtime.cli import UserError, check_output_dir
from labkit.runtime.transfer_options import START_IMAGES, demo_content_shape, style_size, working_size


def check_inputs(args, ckpt=None):
    """The images (read here, so a broken one fails now), the weights file, every stage's
    size against the deepest layer used, the memory rule and the output folder.
    Returns a namespace: ``demo`` (synthetic inputs still to be made), ``content_rgb``,
    ``style_rgbs``, ``init_rgb`` (None unless --init is a picture; all None for --demo),
    ``content_shape``, ``stages`` ([(first step, steps, (h, w))]) and ``deepest``."""
    from labkit.runtime.images import load_rgb
    from labkit.runtime.multiscale import schedule
    from labkit.runtime.transfer import deepest_layer
    demo = args.demo and ckpt is None
    if not demo and (not args.content or not args.style):
        raise UserError("pass --content PATH and --style PATH (or --demo to run without "
                        "weights and images).")
    n_styles = len(args.style) if args.style else 1
    if args.style_blend is not None and len(args.style_blend) != n_styles:
        raise UserError(f"--style-blend: {len(args.style_blend)} weights for {n_styles} "
                        f"style image(s); give one weight per --style image.")
    inputs = SimpleNamespace(demo=demo, content_rgb=None, style_rgbs=None, init_rgb=None)
    if demo:       # the demo's synthetic content: the working aspect, at most 320 pixels
        inputs.content_shape = (load_rgb(args.content).shape if args.content else
                                demo_content_shape(args.height, args.width))
    else:          # fail fast on the images, before the weights
        inputs.content_rgb = load_rgb(args.content)
        inputs.style_rgbs = [load_rgb(p) for p in args.style]
        if args.init not in START_IMAGES:
            inputs.init_rgb = load_rgb(args.init)
        inputs.content_shape = inputs.content_rgb.shape
        args.weights = check_weights_file(args.weights)
    height, width = working_size(args, inputs.content_shape)
    inputs.stages = schedule(height, width, args.scale_list, args.steps)
    if ckpt is not None:
        check_resume_image(ckpt, inputs.stages)
    inputs.deepest = deepest_layer([args.content_layer, *args.style_weights])
    check_sizes(args, inputs.stages, inputs.deepest)
    check_memory(args, inputs.stages, inputs.deepest)
    check_output_dir(args.output_dir, "--output-dir")
    return inputs


def check_weights_file(path):
    """Missing, a folder, a device, unreadable or empty: one message before any slow work.
    Returns the path to use (the default is looked for in the repository too)."""
    from labkit.runtime.matfile import check_weights_path
    return check_weights_path(path)


def check_resume_image(ckpt, stages):
    """The checkpoint's image must have the size the run has at the checkpoint's step (its
    stage's size; at a stage's first step the previous stage's size is fine: it is
    resized); otherwise the checkpoint and the settings do not belong together."""
    step, shape = ckpt["step"], tuple(ckpt["image"].shape[2:])
    allowed = set()
    for i, (start, n, size) in enumerate(stages):
        if start <= step < start + n:
            allowed.add(tuple(size))
            if step == start and i > 0:
                allowed.add(tuple(stages[i - 1][2]))
    if allowed and shape not in allowed:
        raise UserError(f"--resume: the checkpoint's image is {shape[0]}x{shape[1]} but the "
                        f"run's settings give {' or '.join(f'{h}x{w}' for h, w in sorted(allowed))}"
                        f" at step {step}: the checkpoint was edited or belongs to another run. "
                        f"Pass that run's checkpoint.")


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


