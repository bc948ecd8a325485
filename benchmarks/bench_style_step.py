"""Time style-transfer steps on a FULL-SIZE VGG19 (random weights built in memory, the real
channel widths; no 576 MB file needed).

    python benchmarks/bench_style_step.py [--height 192 --width 320 --steps 3 --dtype float32]

Reports the time of one Adam step (forward to relu5_1 + single-pass backward + update), the
forward and backward shares, and one step done the original way (one backward pass per loss
layer, 6 per step) for comparison.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from labkit.runtime.images import make_demo_image, preprocess                   # noqa: E402
from labkit.runtime.fixtures import random_vgg19_weights                        # noqa: E402
from labkit.runtime.transfer import Objective, run_transfer                     # noqa: E402
from stu_upload.style_transfer import VGG19, get_random_img             # noqa: E402

STYLE = {n: 1.0 for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")}


def full_size_weights(seed=0):
    """Conv layers up to pool5 with the real widths (He-initialised); no fc layers."""
    return random_vgg19_weights(width_div=1, seed=seed, last_layer="pool5")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--skip-original", action="store_true", help="skip the 6-pass step")
    args = p.parse_args()
    vgg = VGG19(None, dtype=args.dtype, weights=full_size_weights())
    vgg.build_model(last_layer="relu5_1")
    vgg.load_model()
    h, w = args.height, args.width
    mean = vgg.mean_pixel
    content = preprocess(make_demo_image(h, w, seed=0), mean, h, w, vgg.dtype)
    style = preprocess(make_demo_image(h, w, seed=7), mean, h, w, vgg.dtype)
    obj = Objective(vgg, content, style, "relu4_2", STYLE, 1.0, 500.0)
    image = get_random_img(content, 0.5, np.random.default_rng(1234))
    t0 = time.perf_counter()
    feats = vgg.forward(image, obj.layer_list)
    t1 = time.perf_counter()
    vgg.backward({n: np.ones_like(f) for n, f in feats.items()})
    t2 = time.perf_counter()
    print(f"full-size VGG19 to relu5_1, {h}x{w} {args.dtype}: forward {t1 - t0:.2f} s, "
          f"single-pass backward {t2 - t1:.2f} s")
    result = run_transfer(obj, image, args.steps, "adam", 1.0)
    secs = [r["seconds"] for r in result.history]
    print(f"Adam step times: {', '.join(f'{s:.2f}' for s in secs)} s; "
          f"mean {np.mean(secs):.2f} s/step")
    if not args.skip_original:
        t0 = time.perf_counter()
        feats = vgg.forward(image, obj.layer_list)
        for name, f in feats.items():                 # one pass per loss layer
            vgg.backward(np.ones_like(f), name)
        print(f"original way (forward + {len(feats)} backward passes): "
              f"{time.perf_counter() - t0:.2f} s/step")


if __name__ == "__main__":
    main()
