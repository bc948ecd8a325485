"""Course staff: grade every submission in a folder, one CSV row per student.

    python -m labkit.staff.batch_grade SUBMISSIONS_DIR --out grades.csv
    python -m labkit.staff.batch_grade subs/ --out grades.csv --hidden tests_hidden --reports grading/
    python -m labkit.staff.batch_grade subs/ --out grades.csv -- tests/test_layer_1.py   # pytest args
    python -m labkit.staff.batch_grade subs/ --shard 2/8 --results shards/ --hidden tests_hidden
    python -m labkit.staff.batch_grade merge shards/ --out grades.csv --gradebook book.csv

Each sub-folder or ``.zip`` of SUBMISSIONS_DIR is one student (named after it). Zips are
extracted to a temporary folder (entries that would land outside it, links, oversized or
damaged archives, more than 10,000 entries or folders deeper than 32 are refused: that
student's row says why). Whatever goes wrong with one submission is its row's status; it never
stops the batch. Only the submission's ``stu_upload`` folder is used (found at any depth
up to 3; a folder of loose ``*.py`` files counts as one); it is copied alone into a clean
folder, so a submission's own pytest.ini, conftest.py or labkit copy never takes part.
Each student is graded by ``python -m pytest -c ROOT/pytest.ini --rootdir=ROOT
--stu-dir=...`` (``labkit.staff.grade.pytest_command``) in its own process, with this
repository's tests, a per-test time limit and a wall-clock limit per student.

The CSV (student, points, max_points, percent, failed_tests, status, notes) is sorted by
student name and has no timestamps or temporary paths, so two runs give the same file.

Student code runs only in sandboxed workers (``--sandbox``, see labkit/staff/sandbox/); the
arguments are checked before anyone is graded; every file is written atomically; a
submission that crashes or times out keeps the points of the tests that completed.
``--gradebook`` writes one row per student (total, per-experiment points, lab/beyond totals,
status), ``--gradescope DIR`` one Gradescope ``results.json`` per student.

``--shard K/N`` grades every N-th submission by sorted name, from the K-th (a deterministic
share, for a Slurm job array or machines over ssh); ``--results DIR`` keeps each shard's rows
and reports, and ``merge`` writes from all shards the same grades.csv, gradebook, reports and
Gradescope files as one run would, byte for byte. On a terminal a progress line shows the
submissions graded and an estimate of the time left.
"""
import contextlib
import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

from labkit.runtime.cli import LabParser, OutputError, atomic_path, output_target
from labkit.staff.grading import (HIDDEN_PREFIX, ROOT, _write_json, points_for,
                                  run_grading)
from labkit.staff.reports import read_json
from labkit.staff.sandbox import integrity
from labkit.staff.sandbox.process import SandboxError, copy_submission, detect_mode
from labkit.staff.sanitize import clean_tree

PACKAGE = "stu_upload"
MAX_UNZIPPED = 200 * 1024 * 1024
MAX_DEPTH = 32              # folders, in a zip or a submitted folder
MAX_ENTRIES = 10_000        # files and folders
COLUMNS = ["student", "points", "max_points", "percent", "failed_tests", "status", "notes"]


class SubmissionError(Exception):
    """A submission that cannot be graded at all (bad zip, no stu_upload)."""


def safe_extract(zip_path, dest):
    """Extract ``zip_path`` into ``dest``; refuse path traversal, links, zip bombs, archives
    nested deeper than MAX_DEPTH folders or with more than MAX_ENTRIES entries, and damaged
    archives (every problem is a SubmissionError: this student's row, never the batch's)."""
    dest = os.path.realpath(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise SubmissionError(f"not a valid zip file ({exc})")
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise SubmissionError(f"zip has {len(infos)} entries, more than {MAX_ENTRIES}; "
                                  f"refused")
        total = 0
        for info in infos:
            name = info.filename.replace("\\", "/")
            if name.count("/") - name.endswith("/") >= MAX_DEPTH:
                raise SubmissionError(f"zip entry {_short(info.filename)!r} is nested deeper "
                                      f"than {MAX_DEPTH} folders; refused")
            target = os.path.realpath(os.path.join(dest, name))
            if name.startswith("/") or ".." in name.split("/") or \
                    not (target == dest or target.startswith(dest + os.sep)):
                raise SubmissionError(f"zip entry {_short(info.filename)!r} points outside "
                                      f"the submission folder; refused")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise SubmissionError(f"zip entry {_short(info.filename)!r} is a symbolic "
                                      f"link; refused")
            total += info.file_size
            if total > MAX_UNZIPPED:
                raise SubmissionError(f"zip unpacks to more than {MAX_UNZIPPED >> 20} MB")
        try:
            for info in infos:
                if "__MACOSX" in info.filename.replace("\\", "/").split("/"):
                    continue
                zf.extract(info, dest)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
                ValueError) as exc:         # CRC errors, truncated data, encryption ...
            raise SubmissionError(f"damaged zip file ({type(exc).__name__}: "
                                  f"{_short(str(exc))})")


def _short(text, limit=120):
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _link_refused(path, top):
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    rel = os.path.relpath(path, os.path.dirname(top))
    return SubmissionError(f"{rel} is a symbolic link (to {target!r}); refused: a submission "
                           f"holds real files and folders only (a link would be graded as "
                           f"what it points at)")


def check_tree(folder):
    """Refuse a submission that is a symbolic link, is deeper than MAX_DEPTH or has more than
    MAX_ENTRIES entries (an iterative walk: no recursion, links never followed)."""
    if os.path.islink(folder):
        raise _link_refused(folder, folder)
    count, stack = 0, [(folder, 0)]
    while stack:
        path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SubmissionError(f"submission nested deeper than {MAX_DEPTH} folders; refused")
        try:
            entries = list(os.scandir(path))
        except OSError as exc:
            raise SubmissionError(f"cannot read the submission ({exc.strerror})")
        count += len(entries)
        if count > MAX_ENTRIES:
            raise SubmissionError(f"submission has more than {MAX_ENTRIES} files and folders; "
                                  f"refused")
        stack += [(e.path, depth + 1) for e in entries if e.is_dir(follow_symlinks=False)]


def _walk(folder):
    """(dirpath, dirnames, filenames), shallowest first, without recursion or links."""
    queue = [folder]
    while queue:
        nxt = []
        for path in queue:
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError:
                continue
            dirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            files = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
            yield path, dirs, files
            nxt += [os.path.join(path, d) for d in dirs]
        queue = nxt


def find_package(folder, depth=3):
    """The submission's stu_upload folder (shallowest first), or a folder of loose .py
    files; raises SubmissionError. No link is followed: a symbolic link to a folder on the
    way (``stu_upload`` itself, or any folder of a level searched) is refused with the
    reason, since a link would grade what it points at (the reference, a classmate)."""
    def real_dir(path):                 # a folder, not a link to one
        try:
            return stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            return False
    level = [folder]
    for _ in range(depth + 1):
        for d in level:
            for n in sorted(os.listdir(d)):
                p = os.path.join(d, n)
                if (n == PACKAGE or not (n == "__MACOSX" or n.startswith("."))) and \
                        os.path.islink(p) and (os.path.isdir(p) or n == PACKAGE):
                    raise _link_refused(p, folder)
        found = sorted(os.path.join(d, PACKAGE) for d in level
                       if real_dir(os.path.join(d, PACKAGE)))
        if len(found) > 1:
            raise SubmissionError(f"{len(found)} {PACKAGE} folders at the same depth")
        if found:
            return found[0]
        nxt = []
        for d in level:
            nxt += sorted(os.path.join(d, n) for n in os.listdir(d)
                          if real_dir(os.path.join(d, n)) and n != "__MACOSX"
                          and not n.startswith("."))
        level = nxt
    # loose files: the shallowest folder with .py files
    for dirpath, dirnames, filenames in _walk(folder):
        if "__MACOSX" in os.path.relpath(dirpath, folder).split(os.sep):
            continue
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
        if name.lower().endswith(".zip") and not os.path.isdir(path):
            items.append((name[:-4], path))     # a link to a zip: a row, refused there
        elif os.path.isdir(path) or os.path.islink(path):   # a link too (refused there)
            items.append((name, path))
    names = [n for n, _ in items]
    dupes = {n for n in names if names.count(n) > 1}
    return [(n + (" (zip)" if n in dupes and p.lower().endswith(".zip") else ""), p)
            for n, p in items]


def grade_one(index, student, path, args, work):
    """One CSV row (a dict) and its report (or None) for one submission. Whatever goes wrong
    with this submission (RecursionError, MemoryError, a damaged zip, a grader crash) is this
    row's status: it never stops the batch."""
    try:
        return _grade_one(index, student, path, args, work)
    except Exception as exc:
        row = dict(student=student, points=0, max_points="", percent="0.0", failed_tests="",
                   status="error", notes=f"grading error: {type(exc).__name__}"
                   f"{': ' + _short(str(exc), 200) if str(exc) else ''}".replace(work, "<work>"))
        return row, None


def _grade_one(index, student, path, args, work):
    row = dict(student=student, points=0, max_points="", percent="0.0", failed_tests="",
               status="error", notes="")
    folder = os.path.join(work, "s%05d" % index)
    os.makedirs(folder)
    try:
        src = path
        if os.path.islink(path):
            raise _link_refused(path, path)
        if path.lower().endswith(".zip"):
            src = os.path.join(folder, "unzipped")
            os.makedirs(src)
            safe_extract(path, src)
        check_tree(src)
        pkg = find_package(src)
        clean = os.path.join(folder, "graded", PACKAGE)
        refused = copy_submission(pkg, clean)   # regular files only, links never followed;
    except (SubmissionError, SandboxError) as exc:  # packages, .so, .pyc ... refused (notes)
        row["notes"] = str(exc)
        return row, None
    json_path = os.path.join(folder, "report.json")
    extra = ["--test-timeout", str(args.test_timeout), *args.pytest_args]
    try:
        report, proc = run_grading(clean, json_path, extra=extra, hidden=args.hidden,
                                   timeout=args.timeout, cwd=ROOT, sandbox=args.sandbox,
                                   split=getattr(args, "split", 1) or 1,
                                   threads=_threads(args),
                                   skip_ungraded=getattr(args, "skip_ungraded", False))
    except subprocess.TimeoutExpired:
        report = read_json(json_path)      # partial: the tests that completed count
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
    notes = list(refused[:5])
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


def _threads(args):
    """The BLAS and engine threads of each grading process: the cores shared among the
    submissions graded at once and their parts (never more processes' threads than cores:
    with --jobs 2 each worker's 2 OpenBLAS threads had the cores twice over)."""
    jobs, parts = max(1, getattr(args, "jobs", 1)), max(1, getattr(args, "split", 1) or 1)
    return max(1, (os.cpu_count() or 1) // (jobs * parts))


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
    try:
        output_target(path, what)       # a device, FIFO or socket is never replaced
    except OutputError as exc:
        raise SystemExit2(str(exc)) from None


class SystemExit2(Exception):
    """A bad argument: exit code 2 and one message."""


def parse_shard(text):
    """'K/N' -> (K, N) with 1 <= K <= N; raises SystemExit2."""
    k, sep, n = (text or "").partition("/")
    try:
        k, n = int(k), int(n)
    except ValueError:
        k = n = 0
    if not sep or not 1 <= k <= n:
        raise SystemExit2(f"--shard {text}: give K/N with 1 <= K <= N, e.g. --shard 2/8")
    return k, n


def shard_of(items, k, n):
    """Shard K of N: every N-th submission by sorted name, starting at the K-th (a
    deterministic share; every submission in exactly one shard)."""
    return [it for i, it in enumerate(items) if i % n == k - 1]


def _names_digest(items):
    import hashlib
    return hashlib.sha256("\n".join(n for n, _ in items).encode()).hexdigest()[:16]


class Progress:
    """'graded 7/30 (2 errors), 3m10s elapsed, about 10m left' on stderr, rewritten in place
    when stderr is a terminal (silent otherwise: logs keep one line per student)."""

    def __init__(self, total, stream=None):
        self.total, self.done, self.errors = total, 0, 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.lock = threading.Lock()

    @staticmethod
    def _fmt(seconds):
        seconds = int(round(seconds))
        h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
        return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"

    def line(self):
        elapsed = time.monotonic() - self.start
        text = f"graded {self.done}/{self.total}"
        if self.errors:
            text += f" ({self.errors} not graded)"
        text += f", {self._fmt(elapsed)} elapsed"
        if 0 < self.done < self.total:
            text += f", about {self._fmt(elapsed / self.done * (self.total - self.done))} left"
        return text

    def update(self, row):
        with self.lock:
            self.done += 1
            self.errors += row.get("status") == "error"
            if self.tty:
                end = "\n" if self.done == self.total else ""
                self.stream.write("\r\x1b[K" + self.line() + end)
                self.stream.flush()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    pytest_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    p = LabParser(prog="python -m labkit.batch_grade",
                  description="Grade every submission (sub-folder or .zip) of a folder; write "
                  "one CSV sorted by student. 'python -m labkit.batch_grade merge RESULTS... "
                  "--out grades.csv' combines the --results folders of shards.")
    p.add_argument("submissions", help="folder of submissions")
    p.add_argument("--out", help="CSV file to write (required unless --results is given)")
    p.add_argument("--hidden", help="hidden tests folder (e.g. tests_hidden)")
    p.add_argument("--timeout", type=float, default=900,
                   help="wall-clock limit per student, seconds")
    p.add_argument("--test-timeout", type=float, default=60, help="limit per test, seconds")
    p.add_argument("--jobs", type=int, default=1, help="students graded in parallel")
    p.add_argument("--split", type=int, default=None, metavar="N",
                   help="grade each student's test files in N parts at once, each a grading "
                   "of its own (default: 2 with --jobs 1 on 2 or more cores, else 1)")
    p.add_argument("--skip-ungraded", action="store_true",
                   help="run each student's graded tests only: the ungraded checks (no "
                   "student task affects them, 0 points) are left out; the same points, sooner")
    p.add_argument("--shard", metavar="K/N", help="grade only shard K of N (every N-th "
                   "submission by sorted name, from the K-th); combine the shards' --results "
                   "folders with 'merge'")
    p.add_argument("--results", metavar="DIR", help="write each student's result (row and "
                   "report) to DIR, for 'merge'")
    add_output_args(p)
    p.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "uid", "none"),
                   help="how student code is isolated (default: the strongest that works)")
    args = p.parse_args(argv)
    args.pytest_args = pytest_args
    try:
        check_args(p, args)
    except SystemExit2 as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    everyone = submissions(args.submissions)
    items = shard_of(everyone, *args.shard) if args.shard else everyone
    before = integrity.fingerprint(ROOT, args.hidden)
    print(f"sandbox mode: {args.sandbox_mode}" + (
        f"; shard {args.shard[0]}/{args.shard[1]}: {len(items)} of {len(everyone)} "
        f"submissions" if args.shard else ""), flush=True)
    progress = Progress(len(items))
    index = {name: i for i, (name, _) in enumerate(everyone)}
    with tempfile.TemporaryDirectory(prefix="batch_grade_") as work:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = []
            for s, path in items:
                fut = pool.submit(grade_one, index[s], s, path, args, work)
                fut.add_done_callback(lambda f: progress.update(
                    f.result()[0] if not f.exception() else {"status": "error"}))
                futures.append(fut)
            results = []
            for (student, _), fut in zip(items, futures):
                # names, notes and messages come from submissions: cleaned before any
                # terminal, CSV, report or Gradescope file (labkit/staff/sanitize.py)
                row, report = clean_tree(fut.result())
                student = row["student"]
                results.append((row, report))
                print(f"{student}: {row['points']}/{row['max_points'] or '?'} {row['status']}"
                      f"{' - ' + row['notes'] if row['notes'] else ''}", flush=True)
    results.sort(key=lambda t: t[0]["student"])
    changed = integrity.changes(before, integrity.fingerprint(ROOT, args.hidden))
    if changed:
        for row, _ in results:
            row.update(status="integrity-error", notes="GRADING ERROR: staff files changed "
                       "during this batch: " + "; ".join(changed[:3]))
    if args.results:
        write_results(args.results, results, args.shard or (1, 1), everyone, changed)
    write_outputs(results, args)
    print(f"{len(results)} submissions graded: " + ", ".join(
        x for x in (args.out, args.results) if x))
    if changed:
        print("GRADING ERROR: staff files changed during this batch:\n  " +
              "\n  ".join(changed[:20]), file=sys.stderr)
        return 1
    return 0


def add_output_args(p):
    p.add_argument("--reports", help="folder for each student's JSON report")
    p.add_argument("--gradebook", help="CSV, one row per student: total, per-experiment "
                   "points, lab/beyond totals, status")
    p.add_argument("--gradescope", metavar="DIR", help="write DIR/<student>/results.json "
                   "(Gradescope's format)")


@contextlib.contextmanager
def _csv_output(path, flag):
    """A CSV the staff named (--out, --gradebook): the kit's one writer (labkit.runtime.cli.
    atomic_path: never replaces a device/FIFO, writes through a link, umask permissions)."""
    with atomic_path(path, flag=flag) as tmp, open(tmp, "w", encoding="utf-8",
                                                   newline="") as f:
        yield f


def write_outputs(results, args):
    """grades.csv (--out), the gradebook, the reports and the Gradescope files of ``results``
    ([(row, report)] sorted by student): the same bytes for one run and for merged shards."""
    if args.out:
        with _csv_output(args.out, "--out") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            w.writeheader()
            for row, _ in results:
                w.writerow(row)
    if args.gradebook:
        manifest = read_json(os.path.join(ROOT, "tests", "grading_manifest.json"))
        rows, cols = gradebook_rows(results, manifest)
        with _csv_output(args.gradebook, "--gradebook") as f:
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


# ------------------------------------------------------------------------------- shards
RESULTS_FORMAT = "labkit-batch-results-1"


def write_results(folder, results, shard, everyone, changed):
    """One JSON per shard in ``folder``: its rows and reports, which shard of which list."""
    os.makedirs(folder, exist_ok=True)
    k, n = shard
    _write_json(os.path.join(folder, f"shard-{k}-of-{n}.json"), {
        "format": RESULTS_FORMAT, "shard": [k, n], "submissions": len(everyone),
        "names": _names_digest(everyone), "integrity_changes": changed[:50],
        "results": [{"row": row, "report": report} for row, report in results]})


def merge_main(argv):
    p = LabParser(prog="python -m labkit.batch_grade merge",
                  description="Combine the --results folders (or files) of the shards of one "
                  "batch into the files one run would have written.")
    p.add_argument("results", nargs="+", help="--results folders or their shard-*.json files")
    p.add_argument("--out", required=True, help="CSV file to write")
    add_output_args(p)
    args = p.parse_args(argv)
    try:
        check_outputs(args)
        results, changed = load_shards(args.results)
    except SystemExit2 as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_outputs(results, args)
    print(f"{len(results)} submissions merged: {args.out}")
    if changed:
        print("GRADING ERROR: staff files changed during a shard:\n  " +
              "\n  ".join(changed[:20]), file=sys.stderr)
        return 1
    return 0


def load_shards(paths):
    """([(row, report)] sorted by student, integrity changes) of a complete set of shards;
    SystemExit2 when one is missing, repeated, damaged or from another batch."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path)
                           if n.startswith("shard-") and n.endswith(".json"))
            if not found:
                raise SystemExit2(f"{path}: no shard-*.json files (written by batch_grade "
                                  f"--results)")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SystemExit2(f"{path}: no such folder or file")
    shards, batch = {}, None
    for f in files:
        data = read_json(f)
        if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
            raise SystemExit2(f"{f}: not a shard result of batch_grade --results")
        k, n = data["shard"]
        key = (n, data["submissions"], data["names"])
        if batch is None:
            batch = key
        elif key != batch:
            raise SystemExit2(f"{f}: from another batch (shards of {n} over "
                              f"{data['submissions']} submissions; expected shards of "
                              f"{batch[0]} over {batch[1]})")
        if k in shards:
            raise SystemExit2(f"{f}: shard {k}/{n} given twice")
        shards[k] = data
    missing = [k for k in range(1, batch[0] + 1) if k not in shards]
    if missing:
        raise SystemExit2(f"shard{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(f'{k}/{batch[0]}' for k in missing)} missing; grade "
                          f"{'them' if len(missing) > 1 else 'it'} with --shard first")
    results, changed = [], []
    for k in sorted(shards):
        results += [(r["row"], r["report"]) for r in shards[k]["results"]]
        changed += shards[k]["integrity_changes"]
    if len(results) != batch[1]:
        raise SystemExit2(f"the shards hold {len(results)} submissions, expected {batch[1]}")
    results.sort(key=lambda t: t[0]["student"])
    return results, changed


def check_outputs(args):
    """The output files and folders can be written (SystemExit2: one message)."""
    if args.out:
        check_writable(args.out, "--out")
    if args.gradebook:
        check_writable(args.gradebook, "--gradebook")
    for what, folder in (("--reports", args.reports), ("--gradescope", args.gradescope)):
        if folder:
            check_writable(os.path.join(folder, "x"), what)


def check_args(p, args):
    """Every argument checked before anyone is graded (SystemExit2: one message)."""
    if not args.timeout > 0:
        raise SystemExit2(f"--timeout {args.timeout:g}: must be > 0 seconds")
    if not args.test_timeout > 0:
        raise SystemExit2(f"--test-timeout {args.test_timeout:g}: must be > 0 seconds")
    if args.jobs < 1:
        raise SystemExit2(f"--jobs {args.jobs}: must be at least 1")
    if args.split is None:
        args.split = 2 if args.jobs == 1 and (os.cpu_count() or 1) >= 2 else 1
    if args.split < 1:
        raise SystemExit2(f"--split {args.split}: must be at least 1")
    if args.hidden:
        args.hidden = os.path.abspath(args.hidden)
        if not os.path.isdir(args.hidden):
            raise SystemExit2(f"--hidden {args.hidden}: no such folder")
    if not os.path.isdir(args.submissions):
        raise SystemExit2(f"{args.submissions}: no such folder")
    # staff's own path, resolved once: below it no link is followed (check_tree,
    # find_package, copy_submission opens every folder from / with O_NOFOLLOW)
    args.submissions = os.path.realpath(args.submissions)
    if not submissions(args.submissions):
        raise SystemExit2(f"{args.submissions}: no sub-folders or .zip files")
    if args.shard is not None:
        args.shard = parse_shard(args.shard)
    from labkit.staff.grade import UsageError, split_args
    try:        # after '--': OPTION=VALUE, test paths inside the repository (run from it)
        opts, tests = split_args(args.pytest_args, cwd=ROOT)
    except UsageError as exc:
        raise SystemExit2(f"pytest arguments after '--': {exc}")
    args.pytest_args = opts + tests
    if not args.out and not args.results:
        raise SystemExit2("--out: give the CSV file to write (or --results DIR for a shard)")
    if args.results:
        check_writable(os.path.join(args.results, "x"), "--results")
    check_outputs(args)
    try:
        args.sandbox_mode = detect_mode(args.sandbox)
    except SandboxError as exc:
        raise SystemExit2(str(exc))


if __name__ == "__main__":
    sys.exit(main())
