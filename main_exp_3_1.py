"""Exp 3.1: classify an image with VGG19 on the CPU (layer_1.py, layer_2.py, vgg_cpu.py).

    python main_exp_3_1.py --image cat.jpg                   # real weights in models/
    python main_exp_3_1.py --demo                            # no weights: random small VGG19
    python main_exp_3_1.py --image cat.jpg --layers raw      # the 4-loop layers (slow)
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:           # python -I (no script folder on the path): find labkit
    sys.path.insert(0, HERE)

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.classify_options import check_inputs, make_demo, parse_args
from labkit.runtime.cli import UserError, download_weights, run_main
from labkit.runtime.npyfile import write_pool5

try:        # the tuned engine: labkit/engine/ of the course repository, not in the student kit
    from labkit.engine.attach import tune
except ImportError:
    tune = None


def main(argv=None):
    args = parse_args(argv, has_engine=tune is not None)
    if args.demo:
        make_demo(args)
    reference = check_inputs(args)      # every path, before the weights load
    if not os.path.exists(args.weights) and args.download:
        download_weights(args.weights)
    from labkit.runtime.student import stu
    VGG19 = stu.vgg_cpu.VGG19
    vgg = VGG19(args.weights, type=0 if args.layers == "raw" else 1, dtype=args.dtype,
                verbose=not args.quiet)
    vgg.build_model()
    vgg.init_model()
    vgg.load_model()
    print(f"Weights: {args.weights} ({vgg.file.layout} layout, {vgg.file.num_classes} classes)")
    vgg.load_image(args.image)
    pool5_shape = (1, vgg.file.layer("conv5_4").weight.shape[3], spec.POOL5_SIZE,
                   spec.POOL5_SIZE)
    if reference is not None and reference.shape != pool5_shape:
        raise UserError(f"--check-pool5: {args.check_pool5} has shape {reference.shape}, this "
                        f"network's pool5 is {pool5_shape}: it was made with other weights.")
    if args.layers == "tuned":      # the engine's layers, holding the same weights
        from labkit.engine.perf import reuse_large_allocations
        reuse_large_allocations()
        with tune(vgg).context():   # the tuned engine's own threads
            vgg.forward()
    else:
        vgg.forward()
    if not np.all(np.isfinite(vgg.prob)):
        raise UserError(f"the network's output is NaN or infinite for {args.image} with "
                        f"{args.weights}; the weights or the image are not what VGG19 expects "
                        f"(try --dtype float64 to rule out float32 overflow).")
    vgg.evaluate(args.top_k)
    print(f"Inference time ({args.layers} layers, {args.dtype}): {vgg.inference_time:.3f} s")
    if args.dump_pool5:
        written = write_pool5(args.dump_pool5, vgg.pool5)
        print(f"pool5 saved to {written}")
    if reference is not None:
        mse = float(np.mean((reference - vgg.pool5) ** 2))
        ok = mse < 0.003
        print(f"pool5 check: MSE = {mse:.6g} ({'PASS' if ok else 'FAIL'}, threshold 0.003)")
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
