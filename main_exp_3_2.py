"""Exp 3.2: classify an image with VGG19 on the DLP through pycnml (stu_upload/vgg19_demo.py).

Without a DLP (no ``pycnml`` module) the same code runs on labkit.runtime.pycnml_sim, a NumPy
simulator of the MLU's INT8/fp16 arithmetic; the output says which backend ran.

    python main_exp_3_2.py --image cat.jpg                      # real weights + quant file
    python main_exp_3_2.py --demo                               # no weights needed
    python main_exp_3_2.py --evaluate val_list.txt              # lines "image_path label"
    python -m labkit.runtime.calibrate --weights W.mat --images photos/ # makes the quant file
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:           # python -I (no script folder on the path): find labkit
    sys.path.insert(0, HERE)

from labkit.runtime.cli import UserError, run_main
from labkit.runtime.dlp_options import (check_inputs, check_labels, compare_with_cpu, evaluate,
                                        make_demo, parse_args, read_file_list)


def main(argv=None):
    args = parse_args(argv)
    if args.demo:
        make_demo(args)
    check_inputs(args)          # every path, before the weights load
    from labkit.runtime.student import stu
    demo = stu.vgg19_demo.module
    VGG19 = demo.VGG19
    SIMULATED = bool(getattr(demo.pycnml, "SIMULATOR", False))
    BACKEND = (demo.pycnml.backend_name() if SIMULATED
               else "pycnml (Cambricon MLU270, real DLP)")
    print(f"Backend: {BACKEND}" + (" -- no DLP here; INT8/fp16 arithmetic simulated on the "
                                   "CPU, times are NOT DLP times" if SIMULATED else ""))
    vgg = VGG19()
    vgg.build_model(param_path=args.weights, quant_param_path=args.quant)
    vgg.load_model()
    print(f"Weights: {args.weights} ({vgg.file.layout} layout, {vgg.file.num_classes} classes);"
          f" quantisation: {args.quant}")
    entries = (check_labels(read_file_list(args.evaluate), args.evaluate,
                            vgg.file.num_classes) if args.evaluate else None)
    if args.image:
        vgg.load_image(args.image)
        times = []
        for run in range(1, args.runs + 1):
            vgg.forward()
            if not np.all(np.isfinite(vgg.prob)):
                raise UserError(f"the network's output is NaN or infinite for {args.image} "
                                f"with {args.weights} and {args.quant}; check both files.")
            times.append(vgg.inference_time)
            idx, name, p = vgg.top_k(1)[0]
            print(f"run {run}/{args.runs}: top-1 class {idx} ({name}), prob {p:.6f}")
        print(f"mean inference time over {args.runs} runs: {np.mean(times):.3f} s")
        for rank, (idx, name, p) in enumerate(vgg.top_k(args.top_k), 1):
            print(f"  top-{rank}: {idx:4d}  {p:9.6f}  {name}")
        if not args.no_compare:
            compare_with_cpu(vgg, args.image, min(args.top_k, vgg.file.num_classes))
    if args.evaluate:
        evaluate(vgg, args.evaluate, entries)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
