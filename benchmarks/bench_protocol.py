"""The grader <-> worker protocol's cost, sandboxed: a small call into student code (a full
grade makes about 22,000) and a big array out and back (exp 3.2's build sends 1.15 GB).
Prints numbers only (Linux, as root: the grader's setting).

    python benchmarks/bench_protocol.py [--calls 3000] [--mb 400] [--mode auto]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from labkit.staff.grading import ROOT  # noqa: E402
from labkit.staff.sandbox.client import Session, _module_handle  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--mb", type=int, default=400, help="size of the big array each way")
    p.add_argument("--mode", default="auto", help="sandbox mode (auto, bwrap, uid, none)")
    a = p.parse_args()
    s = Session(os.path.join(ROOT, "stu_upload"), mode=a.mode)
    try:
        relu = s.request("getattr", target=_module_handle(s, "layer_1"), name="ReLULayer")()
        x = np.random.default_rng(0).standard_normal((2, 3, 4))
        for _ in range(200):                    # warm: imports, first frames
            relu.forward(x)
        t, c = time.perf_counter(), time.process_time()
        for _ in range(a.calls):
            relu.forward(x)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        print(f"sandbox {s.mode}: a small forward {dt / a.calls * 1e6:.0f} us per call "
              f"(grader CPU {dc / a.calls * 1e6:.0f} us), {a.calls} calls")
        big = np.ones(a.mb * (1 << 20) // 8)
        for _ in range(2):
            t = time.perf_counter()
            relu.forward(big)
            dt = time.perf_counter() - t
            print(f"sandbox {s.mode}: {a.mb} MB out and {a.mb} MB back: {dt:.2f} s "
                  f"({2 * a.mb / dt:.0f} MB/s)")
    finally:
        s.close()


if __name__ == "__main__":
    main()
