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
"""
import argparse
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

from labkit.staff.grading import ROOT, run_grading

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
        shutil.copytree(pkg, clean, symlinks=False,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    except SubmissionError as exc:
        row["notes"] = str(exc)
        return row, None
    json_path = os.path.join(folder, "report.json")
    extra = ["--test-timeout", str(args.test_timeout), *args.pytest_args]
    try:
        report, proc = run_grading(clean, json_path, extra=extra, hidden=args.hidden,
                                   timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        row.update(status="timeout", notes=f"wall-clock limit of {args.timeout:g} s exceeded; "
                   f"graded 0")
        return row, None
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
    row.update(points=f"{report['points']:g}", max_points=f"{report['max_points']:g}",
               percent=f"{report['percent']:.1f}", failed_tests=report["failed"],
               status="graded", notes="; ".join(notes).replace(clean, PACKAGE))
    return row, report


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description="Grade every submission (sub-folder or .zip) of a "
                                "folder; write one CSV sorted by student.")
    p.add_argument("submissions", help="folder of submissions")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--hidden", help="hidden tests folder (e.g. tests_hidden)")
    p.add_argument("--timeout", type=float, default=900,
                   help="wall-clock limit per student, seconds")
    p.add_argument("--test-timeout", type=float, default=60, help="limit per test, seconds")
    p.add_argument("--jobs", type=int, default=1, help="students graded in parallel")
    p.add_argument("--reports", help="folder for each student's JSON report")
    args = p.parse_args(argv)
    args.pytest_args = pytest_args
    if args.hidden:
        args.hidden = os.path.abspath(args.hidden)
    if not os.path.isdir(args.submissions):
        p.error(f"{args.submissions}: no such folder")
    items = submissions(args.submissions)
    if not items:
        p.error(f"{args.submissions}: no sub-folders or .zip files")
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
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for row, _ in results:
            w.writerow(row)
    if args.reports:
        os.makedirs(args.reports, exist_ok=True)
        for row, report in results:
            if report is not None:
                report = dict(report, stu_dir=row["student"])
                name = "".join(c if c.isalnum() or c in "-_." else "_" for c in row["student"])
                with open(os.path.join(args.reports, name + ".json"), "w",
                          encoding="utf-8") as f:
                    json.dump(report, f, indent=1)
                    f.write("\n")
    print(f"{len(results)} submissions graded: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
