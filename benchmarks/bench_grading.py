"""Seconds per submission: the reference graded in-process (--sandbox=off) and sandboxed, and
a batch of N copies of the reference with --jobs 1 and --jobs 2. Prints numbers and ratios.

    python benchmarks/bench_grading.py [--tests tests/test_layer_1.py] [--batch 30] [--repeat 3]
    python benchmarks/bench_grading.py --full [--repeat 1]     # the WHOLE suite, hidden too

``--full``: one full submission (every public test and every hidden test, the lab tests on
the full-size fixture included; the fixture is made first, outside the timing), in-process
vs sandboxed, with the points each run gave; no batch.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labkit.staff import batch_grade  # noqa: E402
from labkit.staff.grading import ROOT, run_grading  # noqa: E402
from labkit.staff.sandbox.process import detect_mode  # noqa: E402


def one(stu, tmp, tests, sandbox, hidden=None):
    t = time.perf_counter()
    report, proc = run_grading(stu, os.path.join(tmp, "r.json"), extra=tests, sandbox=sandbox,
                               hidden=hidden, timeout=1200)
    dt = time.perf_counter() - t
    assert report, proc.stdout[-1500:] + proc.stderr[-1500:]
    if hidden is None:
        assert report["points"] == report["max_points"], proc.stdout[-1500:]
    return dt, report


def full(stu, tmp, repeat):
    """One full submission (public + hidden), in-process vs sandboxed."""
    hidden = os.path.join(ROOT, "tests_hidden")
    sys.path.insert(0, hidden)
    from lab_support import fixture_folder, make_full_fixture
    make_full_fixture(fixture_folder())             # made once, outside the timing
    res = {}
    for mode in ("off", "auto"):
        runs = [one(stu, tmp, [], mode, hidden) for _ in range(repeat)]
        res[mode] = min(t for t, _ in runs)
        r = runs[-1][1]
        print(f"full submission, {'in-process' if mode == 'off' else 'sandboxed':<10}: best "
              f"{res[mode]:.1f} s, all {' '.join(f'{t:.1f}' for t, _ in runs)}; points "
              f"{r['points']:g}/{r['max_points']:g}, lab {r['lab_points']:g}/"
              f"{r['lab_max_points']:g} ({r['sandbox']['mode']})")
    print(f"full submission, sandboxed / in-process: {res['auto'] / res['off']:.2f}x "
          f"(target <= 1.5x)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tests", nargs="*", default=["tests/test_layer_1.py"])
    p.add_argument("--batch", type=int, default=30)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--full", action="store_true", help="time one full submission (public + "
                   "hidden tests) in-process vs sandboxed; no batch")
    a = p.parse_args()
    stu = os.path.join(ROOT, "stu_upload")
    if a.full:
        print(f"sandbox mode here: {detect_mode('auto')}; CPUs: {os.cpu_count()}")
        with tempfile.TemporaryDirectory() as tmp:
            full(stu, tmp, a.repeat)
        return
    print(f"sandbox mode here: {detect_mode('auto')}; tests: {' '.join(a.tests) or 'all'}; "
          f"CPUs: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for mode in ("off", "auto"):
            times = [one(stu, tmp, a.tests, mode)[0] for _ in range(a.repeat)]
            res[mode] = min(times)
            print(f"one submission, {'in-process' if mode == 'off' else 'sandboxed':<10}: "
                  f"best {min(times):.2f} s, all {' '.join(f'{t:.2f}' for t in times)}")
        print(f"sandboxed / in-process: {res['auto'] / res['off']:.2f}x")
        subs = os.path.join(tmp, "subs")
        for i in range(a.batch):
            shutil.copytree(stu, os.path.join(subs, f"s{i:03d}", "stu_upload"),
                            ignore=shutil.ignore_patterns("__pycache__"))
        per = {}
        for jobs in (1, 2):
            t = time.perf_counter()
            rc = batch_grade.main([subs, "--out", os.path.join(tmp, "g.csv"), "--jobs",
                                   str(jobs), "--", *a.tests])
            per[jobs] = (time.perf_counter() - t) / a.batch
            assert rc == 0
            print(f"batch of {a.batch}, --jobs {jobs}: {per[jobs] * a.batch:.1f} s, "
                  f"{per[jobs]:.2f} s per submission")
        print(f"--jobs 2 speed-up: {per[1] / per[2]:.2f}x")


if __name__ == "__main__":
    main()
