"""Reports and exports of the grading plugin: the grade printed at the end of a pytest run,
the JSON and CSV files (written atomically). Every writer cleans what it writes first
(labkit/staff/sanitize.py: no terminal escapes or control characters, valid UTF-8): messages
and names come from the submission."""
import contextlib
import csv
import json
import os
import tempfile

from labkit.staff._stu_site.sitecustomize import PACKAGE
from labkit.staff.sanitize import clean_text, clean_tree


def print_grade(tr, grade, changed=None, ungraded_run=True):
    """The grade table and totals at the end of the terminal report (one line per test:
    messages are cleaned and their newlines become spaces, so no line can be forged)."""
    grade = clean_tree(grade)
    changed = clean_tree(changed)
    tr.write_sep("=", "grade")
    graded = [r for r in grade["tests"] if r["graded"]]
    ungraded = [r for r in grade["tests"] if not r["graded"]]
    width = min(max([len(r["test"]) for r in graded] + [4]), 70)
    tr.write_line(f"{'test':<{width}}  cat.    points     result   message")
    for r in graded:
        name = r["test"] if len(r["test"]) <= width else "..." + r["test"][-(width - 3):]
        msg = clean_text(r["message"], 110, newlines=False)
        tr.write_line(f"{name:<{width}}  {r['category']:<6}  {r['points']:>4.3g}/"
                      f"{r['max_points']:<5.3g} {r['result'].upper():<8} {msg}".rstrip())
    bad = [r for r in ungraded if r["result"] not in ("passed", "skipped")]
    tr.write_line(f"ungraded checks (no student task affects them): {len(ungraded)}, "
                  f"{len(ungraded) - len(bad)} passed or skipped" if ungraded_run else
                  "ungraded checks (no student task affects them): not run (--skip-ungraded)")
    for r in bad:
        tr.write_line(f"  {r['test']}: {r['result'].upper()} "
                      f"{clean_text(r['message'], 300, newlines=False)}")
    if grade["init_error"]:
        tr.write_line(f"{PACKAGE}/__init__.py failed: "
                      f"{clean_text(grade['init_error'], 300, newlines=False)}")
    tr.write_line(f"{PACKAGE}: {grade['stu_dir']}")
    tr.write_line(f"sandbox: {grade['sandbox']['mode']}"
                  + (f" ({grade['sandbox']['limits']})" if "limits" in grade["sandbox"]
                     else ""))
    if changed:
        tr.write_sep("!", "GRADING ERROR", red=True)
        for line in changed[:20]:
            tr.write_line(f"  {line}", red=True)
    for exp, e in grade["experiments"].items():
        if not e["submitted"]:
            tr.write_line(f"exp {exp}: not submitted (not counted)")
            continue
        tr.write_line(f"exp {exp}: lab {e['lab_points']:g}/{e['lab_max_points']:g}, beyond "
                      f"{e['beyond_points']:g}/{e['beyond_max_points']:g}")
    tr.write_line(f"LAB: {grade['lab_points']:g} / {grade['lab_max_points']:g} points; "
                  f"BEYOND: {grade['beyond_points']:g} / {grade['beyond_max_points']:g}")
    tr.write_line(f"GRADE: {grade['points']:g} / {grade['max_points']:g} points "
                  f"({grade['percent']:.1f}%): {clean_text(grade['verdict'], newlines=False)}",
                  bold=True)


def write_grade_csv(path, grade):
    """The per-test grades as CSV."""
    grade = clean_tree(grade)
    with _atomic(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["test", "category", "experiment", "points", "max_points", "result",
                    "graded", "hidden", "message"])
        for r in grade["tests"]:
            w.writerow([r["test"], r["category"], r["experiment"] or "",
                        f"{r['points']:g}", f"{r['max_points']:g}", r["result"],
                        int(r["graded"]), int(r["hidden"]), r["message"]])


@contextlib.contextmanager
def _atomic(path, newline=None):
    """Write ``path`` through a temporary file in the same folder, then os.replace."""
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path):
    """The JSON at ``path``, or None (missing, unreadable, not JSON: a grader killed
    mid-write)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path, data):
    with _atomic(path) as f:
        json.dump(clean_tree(data), f, indent=1)
        f.write("\n")
