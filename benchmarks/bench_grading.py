"""Seconds per submission: the reference graded in-process (--sandbox=off) and sandboxed, and
a batch of N copies of the reference with --jobs 1 and --jobs 2. Prints numbers and ratios.

    python benchmarks/bench_grading.py [--tests tests/test_layer_1.py] [--batch 30] [--repeat 3]
    python benchmarks/bench_grading.py --full [--repeat 1]     # the WHOLE suite, hidden too
    python benchmarks/bench_grading.py --profile [--full | --tests ...] [--stu DIR]
    python benchmarks/bench_grading.py --batch 30 --jobs-only 2 [--tests ...] [--skip-ungraded]

``--profile``: one sandboxed grading with the profile plugin (labkit/staff/profile.py): where
the time goes per test (worker starts, fixtures, driver subprocesses, the student's compute,
the grader's own, the protocol's bytes) and in total. ``--batch N --jobs-only J``: time a
batch of N copies of the submission with --jobs J only and extrapolate to 300 students (an
extrapolation, printed as one).

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


def one(stu, tmp, tests, sandbox, hidden=None, split=1, skip_ungraded=False):
    t = time.perf_counter()
    report, proc = run_grading(stu, os.path.join(tmp, "r.json"), extra=tests, sandbox=sandbox,
                               hidden=hidden, timeout=1200, split=split,
                               skip_ungraded=skip_ungraded)
    dt = time.perf_counter() - t
    assert report, proc.stdout[-1500:] + proc.stderr[-1500:]
    if hidden is None:
        assert report["points"] == report["max_points"], proc.stdout[-1500:]
    return dt, report


def full(stu, tmp, repeat, split=2, skip_ungraded=False):
    """One full submission (public + hidden): in-process, sandboxed, and sandboxed in
    ``split`` parts at once (labkit/staff/split.py: what batch_grade --jobs 1 does)."""
    hidden = os.path.join(ROOT, "tests_hidden")
    sys.path.insert(0, hidden)
    from lab_support import fixture_folder, make_full_fixture
    make_full_fixture(fixture_folder())             # made once, outside the timing
    res = {}
    runs_of = [("off", 1, "in-process", False), ("auto", 1, "sandboxed", False)]
    if split > 1:
        runs_of.append(("auto", split, f"sandboxed, {split} parts", False))
    if skip_ungraded:
        runs_of.append(("auto", 1, "sandboxed, graded only", True))
        if split > 1:
            runs_of.append(("auto", split, f"sandboxed, {split} parts, graded only", True))
    for mode, parts, label, skip in runs_of:
        runs = [one(stu, tmp, [], mode, hidden, parts, skip) for _ in range(repeat)]
        res[label] = min(t for t, _ in runs)
        r = runs[-1][1]
        print(f"full submission, {label:<32}: best {res[label]:.1f} s, all "
              f"{' '.join(f'{t:.1f}' for t, _ in runs)}; points {r['points']:g}/"
              f"{r['max_points']:g}, lab {r['lab_points']:g}/{r['lab_max_points']:g} "
              f"({r['sandbox']['mode']})")
    print(f"full submission, sandboxed / in-process: {res['sandboxed'] / res['in-process']:.2f}x "
          f"(target <= 1.5x)")
    if split > 1:
        best = res[f"sandboxed, {split} parts"]
        print(f"full submission, sandboxed in {split} parts: {best:.1f} s (target <= 45 s); "
              f"{res['sandboxed'] / best:.2f}x faster than in one part")


def profile(stu, tmp, tests, hidden, top=25):
    """One sandboxed grading under the profile plugin; prints the table."""
    import json
    out = os.path.join(tmp, "profile.json")
    if hidden:
        sys.path.insert(0, hidden)
        from lab_support import fixture_folder, make_full_fixture
        make_full_fixture(fixture_folder())             # made once, outside the timing
    t = time.perf_counter()
    report, proc = run_grading(stu, os.path.join(tmp, "r.json"), hidden=hidden, timeout=3600,
                               extra=["-p", "labkit.staff.profile", f"--grade-profile={out}",
                                      *tests])
    dt = time.perf_counter() - t
    assert report and os.path.exists(out), proc.stdout[-1500:] + proc.stderr[-1500:]
    with open(out) as f:
        prof = json.load(f)
    cols = [("wall", "wall"), ("worker_start", "worker"), ("fix", "fixtures"),
            ("driver_wall", "drivers"), ("student", "student"), ("callback", "callback"),
            ("grader", "grader")]
    rows = sorted(prof["tests"].items(), key=lambda kv: -kv[1]["wall"])
    width = min(max(len(n) for n, _ in rows), 72)
    print(f"{'test (slowest first, seconds)':<{width}} " + " ".join(f"{h:>8}" for _, h in cols)
          + "   n_drv n_calls      MB out/in")
    for name, d in rows[:top]:
        d["fix"] = sum(d["fixtures"].values())
        name = name if len(name) <= width else "..." + name[-(width - 3):]
        print(f"{name:<{width}} " + " ".join(f"{d[k]:8.2f}" for k, _ in cols) +
              f"   {d['drivers']:5d} {d['student_calls']:7d} {d['bytes_out'] / 1e6:7.1f}/"
              f"{d['bytes_in'] / 1e6:.1f}")
    tot = prof["total"]
    tot["fix"] = sum(tot["fixtures"].values())
    print(f"{'TOTAL (' + str(len(rows)) + ' tests)':<{width}} " +
          " ".join(f"{tot[k]:8.2f}" for k, _ in cols) +
          f"   {tot['drivers']:5d} {tot['student_calls']:7d} {tot['bytes_out'] / 1e6:7.1f}/"
          f"{tot['bytes_in'] / 1e6:.1f}")
    files = {}
    for name, d in rows:
        key = name.split("::")[0]
        files[key] = files.get(key, 0.0) + d["wall"]
    print("per test file (seconds; split.WEIGHTS balances the parts by these): " + ", ".join(
        f"{os.path.basename(k)} {v:.1f}" for k, v in sorted(files.items(), key=lambda kv: -kv[1])))
    slow_fix = sorted(tot["fixtures"].items(), key=lambda kv: -kv[1])[:6]
    print("fixtures (setup seconds, all tests): " + ", ".join(f"{k} {v:.2f}"
                                                             for k, v in slow_fix))
    print(f"worker starts: {tot['worker_starts']} ({tot['worker_start']:.2f} s); driver "
          f"subprocesses: {tot['drivers']} ({tot['driver_wall']:.1f} s wall); calls into "
          f"student code: {tot['student_calls']} ({tot['student']:.1f} s, the protocol "
          f"included); protocol bytes: {tot['bytes_out'] / 1e6:.1f} MB out, "
          f"{tot['bytes_in'] / 1e6:.1f} MB in")
    print(f"whole grading (pytest process, start to end): {dt:.1f} s wall; points "
          f"{report['points']:g}/{report['max_points']:g}; sandbox {report['sandbox']['mode']}")


def batch_only(stu, tmp, tests, n, jobs, hidden=None, skip_ungraded=False):
    subs = os.path.join(tmp, "subs")
    for i in range(n):
        shutil.copytree(stu, os.path.join(subs, f"s{i:03d}", "stu_upload"),
                        ignore=shutil.ignore_patterns("__pycache__"))
    args = [subs, "--out", os.path.join(tmp, "g.csv"), "--jobs", str(jobs), "--timeout",
            "3600"]                     # a measurement: not cut short by the default 900 s
    if hidden:
        args += ["--hidden", hidden]
    if skip_ungraded:
        args += ["--skip-ungraded"]
    t = time.perf_counter()
    rc = batch_grade.main(args + ["--", *tests])
    dt = time.perf_counter() - t
    assert rc == 0
    import csv
    with open(os.path.join(tmp, "g.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    bad = [r for r in rows if r["status"] != "graded" or r["points"] != r["max_points"]]
    if bad:
        print(f"WARNING: {len(bad)} of {n} not fully graded (e.g. {bad[0]['status']}, "
              f"{bad[0]['points']}/{bad[0]['max_points']}: {bad[0]['notes'][:120]}); the time "
              f"below is not a correct grading's")
    per = dt / n
    print(f"batch of {n} (measured), --jobs {jobs}{' --skip-ungraded' * skip_ungraded}: "
          f"{dt:.1f} s, {per:.2f} s per submission")
    print(f"extrapolated (not measured) to 300 submissions: {per * 300 / 3600:.2f} h "
          f"(the issue's target for full gradings, --full: <= 2 h)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tests", nargs="*", default=["tests/test_layer_1.py"])
    p.add_argument("--batch", type=int, default=30)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--full", action="store_true", help="time one full submission (public + "
                   "hidden tests) in-process vs sandboxed; no batch")
    p.add_argument("--profile", action="store_true", help="profile one sandboxed grading "
                   "(with --full: public and hidden tests; else --tests)")
    p.add_argument("--jobs-only", type=int, metavar="J", help="time only a batch of --batch "
                   "copies with --jobs J, extrapolated to 300 students")
    p.add_argument("--stu", default=os.path.join(ROOT, "stu_upload"), help="the submission")
    p.add_argument("--skip-ungraded", action="store_true", help="--jobs-only: grade with "
                   "batch_grade --skip-ungraded (the graded tests only: the same points); "
                   "--full: also time gradings of the graded tests only")
    p.add_argument("--split", type=int, default=2, help="--full: also time the sandboxed "
                   "grading in this many parts at once (1: not)")
    a = p.parse_args()
    stu = os.path.abspath(a.stu)
    hidden = os.path.join(ROOT, "tests_hidden") if a.full else None
    if a.profile:
        with tempfile.TemporaryDirectory() as tmp:
            profile(stu, tmp, [] if a.full else a.tests, hidden)
        return
    if a.jobs_only:
        with tempfile.TemporaryDirectory() as tmp:
            batch_only(stu, tmp, [] if a.full else a.tests, a.batch, a.jobs_only, hidden,
                       a.skip_ungraded)
        return
    if a.full:
        print(f"sandbox mode here: {detect_mode('auto')}; CPUs: {os.cpu_count()}")
        with tempfile.TemporaryDirectory() as tmp:
            full(stu, tmp, a.repeat, a.split, a.skip_ungraded)
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
