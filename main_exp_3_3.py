"""Exp 3.3: non-real-time style transfer (Gatys et al.) with hand-written backprop.

Your code: layer_1.py, layer_2.py (the speed test below), layer_3.py (the losses, Adam) and
style_transfer.py (the feature network, transfer_loss and the style_transfer loop).

    python main_exp_3_3.py --content content.jpg --style style.jpg     # real weights in models/
    python main_exp_3_3.py --demo --steps 10                            # no weights needed
    python main_exp_3_3.py --speed-test-only                            # loops vs img2col

Options, input checks, Ctrl-C, checkpoints and the contact sheet live in labkit/runtime/
(transfer_options, transfer_checks, signals, transfer_run, transfer_sheet).
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:           # python -I (no script folder on the path): find labkit
    sys.path.insert(0, HERE)

from labkit.runtime.cli import UserError, run_main
from labkit.runtime.signals import StopSignals, exit_code_of_stop
from labkit.runtime.student import stu
from labkit.runtime.transfer_checks import check_inputs
from labkit.runtime.transfer_options import read_command_line
from labkit.runtime import transfer_run

try:        # the tuned engine: labkit/engine/ of the course repository, not in the student kit
    from labkit.engine.attach import tune_for_transfer
except ImportError:
    tune_for_transfer = None

def speed_test(seed=1234):
    """The original check: loops (type=0) vs img2col (type=1) on one 3x3, 256->256 conv;
    the outputs and the input gradients must agree (MSE < 0.003)."""
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


def main(argv=None, hook=None):
    """The experiment; ``hook(step, image, record)`` runs after each step (tests use it)."""
    with StopSignals() as guard:
        try:
            return transfer(argv, guard, hook)
        except KeyboardInterrupt:
            return exit_code_of_stop(guard)      # SIGTERM: 143; Ctrl-C: 130


def transfer(argv, guard, hook=None):
    args, checkpoint = read_command_line(argv, has_engine=tune_for_transfer is not None)
    if args.speed_test_only:
        speed_test(args.seed)
        return 0
    inputs = check_inputs(args, checkpoint)      # every file and size, before slow work
    if inputs.demo:
        transfer_run.make_demo_inputs(args, inputs)
    if not args.skip_speed_test:
        speed_test(args.seed)

    # the feature network (your style_transfer.py), only as deep as the losses need
    print(f"Loading {args.weights} ...", flush=True)
    vgg = stu.style_transfer.VGG19(args.weights, dtype=np.dtype(args.dtype))
    vgg.build_model(last_layer=inputs.deepest)
    vgg.init_model()
    vgg.load_model()
    engine = transfer_run.attach_engine(vgg, args, tune_for_transfer)   # --conv auto: tuned

    # the targets: the content's features and the style's Gram matrices, at each scale;
    # the loss of an image is your transfer_loss (content + style, eqs. 3.10-3.16)
    make_objective = transfer_run.objective_maker(args, vgg, inputs, engine)
    # the start image: noise blended with the content (your get_random_img)
    image, rng = transfer_run.start_image(args, vgg, inputs, stu.style_transfer.get_random_img,
                                          checkpoint)
    # the transfer: your style_transfer loop (Adam, eq. 3.17) for --steps steps, saving
    # output/<run id>_stepNNNN.jpg every --save-every steps and <run id>_final.jpg
    return transfer_run.run_and_save(
        args, vgg, make_objective, image, inputs.content_rgb, hook=hook,
        context=engine.context if engine else None, stages=inputs.stages,
        style_rgbs=inputs.style_rgbs, resume=checkpoint, rng=rng, guard=guard)


if __name__ == "__main__":
    sys.exit(run_main(main))
