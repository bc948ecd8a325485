"""Course staff: grade every submission in a folder, one CSV row per student.

    python -m labkit.staff.batch_grade SUBMISSIONS_DIR --out grades.csv
    python -m labkit.staff.batch_grade subs/ --out grades.csv --hidden tests_hidden --reports grading/
    python -m labkit.staff.batch_grade subs/ --out grades.csv -- tests/test_layer_1.py   # pytest args

Each sub-folder or ``.zip`` of SUBMISSIONS_DIR is one student (named after it). Zips are
extracted to a temporary folder (entries that would land outside it, links and oversized
archives are refused). Only the submission's ``stu_upload`` folder is used (found at any depth
up to 3; a folder of loose ``*.py`` files counts as one); it is copied alone into a clean
folder, so a submission's own pytest.ini, conftest.py or labkit copy never takes part.
Each student is graded by ``python -m pytest --stu-dir=...`` in its own process, with this
repository's tests, a per-test time limit and a wall-clock limit per student.

The CSV (student, points, max_points, percent, failed_tests, status, notes) is sorted by
student name and has no timestamps or temporary paths, so two runs give the same file.

Student code runs only in sandboxed workers (``--sandbox``, see labkit/staff/sandbox/); the
arguments are checked before anyone is graded; every file is written atomically; a
submission that crashes or times out keeps the points of the tests that completed.
``--gradebook`` writes one row per student (total, per-experiment points, lab/beyond totals,
status), ``--gradescope DIR`` one Gradescope ``results.json`` per student.
"""
import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor

from labkit.runtime.cli import LabParser
from labkit.staff.grading import (HIDDEN_PREFIX, ROOT, _atomic, _write_json, points_for,
                                  run_grading)
from labkit.staff.sandbox import integrity
from labkit.staff.sandbox.process import SandboxError, copy_submission, detect_mode

PACKAGE = "stu_upload"
MAX_UNZIPPED = 200 * 1024 * 1024
COLUMNS = ["student", "points", "max_points", "percent", "failed_tests", "status", "notes"]


class SubmissionError(Exception):
    """A submission that cannot be graded at all (bad zip, no stu_upload)."""


def safe_extract(zip_path, dest):
    """Extract ``zip_path`` into ``dest``; refuse path traversal, links and zip bombs."""
    dest = os.path.realpath(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise SubmissionError(f"not a valid zip file ({exc})")
    with zf:
        total = 0
        for info in zf.infolist():
            name = info.filename.replace("\\", "/")
            target = os.path.realpath(os.path.join(dest, name))
            if name.startswith("/") or ".." in name.split("/") or \
                    not (target == dest or target.startswith(dest + os.sep)):
                raise SubmissionError(f"zip entry {info.filename!r} points outside the "
                                      f"submission folder; refused")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise SubmissionError(f"zip entry {info.filename!r} is a symbolic link; refused")
            total += info.file_size
            if total > MAX_UNZIPPED:
                raise SubmissionError(f"zip unpacks to more than {MAX_UNZIPPED >> 20} MB")
        for info in zf.infolist():
            if "__MACOSX" in info.filename.split("/"):
                continue
            zf.extract(info, dest)


def find_package(folder, depth=3):
    """The submission's stu_upload folder (shallowest first), or a folder of loose .py
    files; raises SubmissionError."""
    level = [folder]
    for _ in range(depth + 1):
        found = sorted(os.path.join(d, PACKAGE) for d in level
                       if os.path.isdir(os.path.join(d, PACKAGE)))
        if len(found) > 1:
            raise SubmissionError(f"{len(found)} {PACKAGE} folders at the same depth")
        if found:
            return found[0]
        nxt = []
        for d in level:
            nxt += sorted(os.path.join(d, n) for n in os.listdir(d)
                          if os.path.isdir(os.path.join(d, n)) and n != "__MACOSX"
                          and not n.startswith("."))
        level = nxt
    # loose files: the shallowest folder with .py files
    for dirpath, dirnames, filenames in sorted(os.walk(folder), key=lambda t: t[0].count(os.sep)):
        dirnames[:] = [d for d in dirnames if d != "__MACOSX"]
        if any(f.endswith(".py") for f in filenames):
            return dirpath
    raise SubmissionError(f"no {PACKAGE} folder and no .py files in the submission")


def submissions(folder):
    """[(student name, path)] sorted by name: sub-folders and .zip files."""
    items = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("."):
            continue
        if os.path.isdir(path):
            items.append((name, path))
        elif name.lower().endswith(".zip"):
            items.append((name[:-4], path))
    names = [n for n, _ in items]
    dupes = {n for n in names if names.count(n) > 1}
    return [(n + (" (zip)" if n in dupes and p.lower().endswith(".zip") else ""), p)
            for n, p in items]


def grade_one(index, student, path, args, work):
    """One CSV row (a dict) for one submission."""
    row = dict(student=student, points=0, max_points="", percent="0.0", failed_tests="",
               status="error", notes="")
    folder = os.path.join(work, "s%05d" % index)
    os.makedirs(folder)
    try:
        src = path
        if path.lower().endswith(".zip"):
            src = os.path.join(folder, "unzipped")
            os.makedirs(src)
            safe_extract(path, src)
        pkg = find_package(src)
        clean = os.path.join(folder, "graded", PACKAGE)
        copy_submission(pkg, clean)         # regular files only: links are never followed
    except (SubmissionError, SandboxError) as exc:
        row["notes"] = str(exc)
        return row, None
    json_path = os.path.join(folder, "report.json")
    extra = ["--test-timeout", str(args.test_timeout), *args.pytest_args]
    try:
        report, proc = run_grading(clean, json_path, extra=extra, hidden=args.hidden,
                                   timeout=args.timeout, cwd=ROOT, sandbox=args.sandbox)
    except subprocess.TimeoutExpired:
        report = _read_json(json_path)      # partial: the tests that completed count
        note = f"wall-clock limit of {args.timeout:g} s exceeded"
        if report is None:
            row.update(status="timeout", notes=note + "; graded 0")
            return row, None
        row.update(points=f"{report['points']:g}", max_points=f"{report['max_points']:g}",
                   percent=f"{report['percent']:.1f}", failed_tests=report["failed"],
                   status="timeout", notes=note + "; partial grade of the tests that "
                   "completed")
        report["status"] = "timeout"
        return row, report
    if report is None:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        row["notes"] = f"grading crashed: {tail[0][:200]}".replace(clean, PACKAGE)
        return row, None
    notes = []
    if report["collection_errors"]:
        for module, msg in report["collection_errors"].items():
            notes.append(f"{module}: {msg.replace('could not import the test module: ', '')}")
    if report.get("init_error"):
        notes.append(f"{PACKAGE}/__init__.py: {report['init_error']}")
    timeouts = sum(r["result"] == "timeout" for r in report["tests"] if r["graded"])
    if timeouts:
        notes.append(f"{timeouts} tests over the time limit")
    if not report["hidden_run"]:
        notes.append("public tests only; hidden tests not run")
    status = report.get("status", "graded")
    if status == "incomplete":
        status = "crashed"
        notes.insert(0, "the grader did not finish; partial grade")
    if report.get("integrity_changes"):
        notes.insert(0, "GRADING ERROR: staff files changed: " +
                     "; ".join(report["integrity_changes"][:3]))
    row.update(points=f"{report['points']:g}", max_points=f"{report['max_points']:g}",
               percent=f"{report['percent']:.1f}", failed_tests=report["failed"],
               status=status, notes="; ".join(notes).replace(clean, PACKAGE))
    return row, report


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------- exports
EXPERIMENTS = [("3.1", ("layer_1", "layer_2", "vgg_cpu", "hidden_layers")),
               ("3.2", ("vgg19_demo", "pycnml", "calibrate")),
               ("3.3", ("layer_3", "style_transfer"))]


def experiment_of(test_id, info=None):
    """The experiment a test belongs to: the manifest's ``experiment`` field, else by file."""
    if info and info.get("experiment"):
        return str(info["experiment"])
    module = test_id.partition("::")[0]
    for exp, names in EXPERIMENTS:
        if any(n in module for n in names):
            return exp
    return "other"


def gradebook_rows(results, manifest):
    """One row per student: total, per-experiment points, lab/beyond totals, status."""
    tests = (manifest or {}).get("tests", {})
    exps = [e for e, _ in EXPERIMENTS] + ["other"]
    rows = []
    for row, report in results:
        out = {"student": row["student"], "total": row["points"],
               "max_points": row["max_points"], "percent": row["percent"],
               "status": row["status"]}
        per = {e: 0.0 for e in exps}
        cat = {"lab": 0.0, "beyond": 0.0}
        has_cat = False
        for r in (report or {}).get("tests", []):
            if not r["graded"]:
                continue
            info = tests.get(r["test"], {})
            per[experiment_of(r["test"], info)] += r["points"]
            if info.get("category") in cat:
                has_cat = True
                cat[info["category"]] += r["points"]
        for e in exps:
            out[f"exp_{e}"] = f"{per[e]:g}" if report else ""
        out["lab"] = f"{cat['lab']:g}" if report and has_cat else ""
        out["beyond"] = f"{cat['beyond']:g}" if report and has_cat else ""
        out["notes"] = row["notes"]
        rows.append(out)
    return rows, ["student", "total", "max_points", "percent"] + [f"exp_{e}" for e in exps] + \
        ["lab", "beyond", "status", "notes"]


def gradescope_results(report, row=None):
    """Gradescope's results.json for one report (or a zero result with the reason)."""
    if report is None:
        why = (row or {}).get("notes") or "the submission could not be graded"
        return {"score": 0, "output": f"Not graded: {why}", "tests": []}
    tests = []
    for r in report["tests"]:
        hidden = r["hidden"] or r["test"].startswith(HIDDEN_PREFIX)
        name = r["test"] if not hidden else "hidden test " + r["test"].split("::")[-1]
        tests.append({"name": name, "score": r["points"], "max_score": r["max_points"],
                      "output": f"{r['result']}: {r['message']}" if r["message"]
                      else r["result"],
                      "visibility": "after_published" if hidden else "visible"})
    return {"score": report["points"], "output": report.get("verdict", ""), "tests": tests}


def _safe_name(student):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in student) or "_"


def check_writable(path, what):
    """Exit 2 with one message unless ``path`` (a file) can be written."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check_"):
            pass
    except OSError as exc:
        raise SystemExit2(f"{what} {path}: cannot write there ({exc.strerror}); choose a "
                          f"writable path")
    if os.path.isdir(path):
        raise SystemExit2(f"{what} {path}: is a folder; give a file name")


class SystemExit2(Exception):
    """A bad argument: exit code 2 and one message."""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    p = LabParser(prog="python -m labkit.batch_grade",
                  description="Grade every submission (sub-folder or .zip) of a folder; write "
                  "one CSV sorted by student.")
    p.add_argument("submissions", help="folder of submissions")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--hidden", help="hidden tests folder (e.g. tests_hidden)")
    p.add_argument("--timeout", type=float, default=900,
                   help="wall-clock limit per student, seconds")
    p.add_argument("--test-timeout", type=float, default=60, help="limit per test, seconds")
    p.add_argument("--jobs", type=int, default=1, help="students graded in parallel")
    p.add_argument("--reports", help="folder for each student's JSON report")
    p.add_argument("--gradebook", help="CSV, one row per student: total, per-experiment "
                   "points, lab/beyond totals, status")
    p.add_argument("--gradescope", metavar="DIR", help="write DIR/<student>/results.json "
                   "(Gradescope's format)")
    p.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "uid", "none"),
                   help="how student code is isolated (default: the strongest that works)")
    args = p.parse_args(argv)
    args.pytest_args = pytest_args
    try:
        check_args(p, args)
    except SystemExit2 as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    items = submissions(args.submissions)
    before = integrity.fingerprint(ROOT, args.hidden)
    print(f"sandbox mode: {args.sandbox_mode}", flush=True)
    with tempfile.TemporaryDirectory(prefix="batch_grade_") as work:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = [pool.submit(grade_one, i, s, os.path.abspath(path), args, work)
                       for i, (s, path) in enumerate(items)]
            results = []
            for (student, _), fut in zip(items, futures):
                row, report = fut.result()
                results.append((row, report))
                print(f"{student}: {row['points']}/{row['max_points'] or '?'} {row['status']}"
                      f"{' - ' + row['notes'] if row['notes'] else ''}", flush=True)
    results.sort(key=lambda t: t[0]["student"])
    changed = integrity.changes(before, integrity.fingerprint(ROOT, args.hidden))
    if changed:
        for row, _ in results:
            row.update(status="integrity-error", notes="GRADING ERROR: staff files changed "
                       "during this batch: " + "; ".join(changed[:3]))
    with _atomic(args.out, newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for row, _ in results:
            w.writerow(row)
    if args.gradebook:
        manifest = _read_json(os.path.join(ROOT, "tests", "grading_manifest.json"))
        rows, cols = gradebook_rows(results, manifest)
        with _atomic(args.gradebook, newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    if args.reports:
        os.makedirs(args.reports, exist_ok=True)
        for row, report in results:
            if report is not None:
                report = dict(report, stu_dir=row["student"])
                _write_json(os.path.join(args.reports, _safe_name(row["student"]) + ".json"),
                            report)
    if args.gradescope:
        for row, report in results:
            folder = os.path.join(args.gradescope, _safe_name(row["student"]))
            os.makedirs(folder, exist_ok=True)
            _write_json(os.path.join(folder, "results.json"), gradescope_results(report, row))
    print(f"{len(results)} submissions graded: {args.out}")
    if changed:
        print("GRADING ERROR: staff files changed during this batch:\n  " +
              "\n  ".join(changed[:20]), file=sys.stderr)
        return 1
    return 0


def check_args(p, args):
    """Every argument checked before anyone is graded (SystemExit2: one message)."""
    if not args.timeout > 0:
        raise SystemExit2(f"--timeout {args.timeout:g}: must be > 0 seconds")
    if not args.test_timeout > 0:
        raise SystemExit2(f"--test-timeout {args.test_timeout:g}: must be > 0 seconds")
    if args.jobs < 1:
        raise SystemExit2(f"--jobs {args.jobs}: must be at least 1")
    if args.hidden:
        args.hidden = os.path.abspath(args.hidden)
        if not os.path.isdir(args.hidden):
            raise SystemExit2(f"--hidden {args.hidden}: no such folder")
    if not os.path.isdir(args.submissions):
        raise SystemExit2(f"{args.submissions}: no such folder")
    if not submissions(args.submissions):
        raise SystemExit2(f"{args.submissions}: no sub-folders or .zip files")
    check_writable(args.out, "--out")
    if args.gradebook:
        check_writable(args.gradebook, "--gradebook")
    for what, folder in (("--reports", args.reports), ("--gradescope", args.gradescope)):
        if folder:
            check_writable(os.path.join(folder, "x"), what)
    try:
        args.sandbox_mode = detect_mode(args.sandbox)
    except SandboxError as exc:
        raise SystemExit2(str(exc))


if __name__ == "__main__":
    sys.exit(main())
