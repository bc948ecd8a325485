"""Course staff: the mutation catalogue. Classic one-line mistakes applied to the reference
solution, each graded as a submission: it must fail a public test of its file with a message
that names the quantity, and lose lab points in exactly its rubric rows.

    python -m labkit.staff.mutants                    # every mutant, the table
    python -m labkit.staff.mutants --only style_loss_without_N --jobs 1
    python -m labkit.staff.mutants --json out.json

The catalogue is ``tests_staff/data/mutants.json``: per mutant the student file, the exact
text replaced (it must occur once), the public test files of that file, a regular expression
the failure message must match, and the LAB_RUBRIC rows that must lose points (no others).
Each mutant runs in one pytest process, unsandboxed (the code is ours): the public test files
of its file plus the hidden lab tests of the experiments that use the file
(``--grade-manifest none``: points from this run's tests). ``tests_staff/test_mutations.py``
(marker ``mutants``) checks the whole catalogue.
"""
import argparse
import concurrent.futures
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CATALOGUE = os.path.join(ROOT, "tests_staff", "data", "mutants.json")
HIDDEN = os.path.join(ROOT, "tests_hidden")
# the hidden lab modules of the experiments that use each student file
EXPERIMENT_MODULES = {
    "layer_1.py": ["test_lab_3_1", "test_lab_3_3"], "layer_2.py": ["test_lab_3_1", "test_lab_3_3"],
    "layer_3.py": ["test_lab_3_3"], "vgg_cpu.py": ["test_lab_3_1"],
    "vgg19_demo.py": ["test_lab_3_2"], "style_transfer.py": ["test_lab_3_3"],
}
# per-test limit: our own one-line edits (no endless loops); the grader's default 60 s is
# too short for the full-size end-to-end tests on a loaded machine, and a time-out would be
# counted as a lost row
TEST_TIMEOUT = 600
BARE = re.compile(r"^(assertion failed|AssertionError\s*$|assert )")


def load_catalogue(path=CATALOGUE):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["mutants"]


def apply(mutant, stu_src, dst):
    """Copy ``stu_src`` to ``dst`` with the mutant's one edit; the text must occur once."""
    shutil.copytree(stu_src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    path = os.path.join(dst, mutant["file"])
    with open(path, encoding="utf-8") as f:
        text = f.read()
    count = text.count(mutant["old"])
    if count != 1:
        raise ValueError(f"mutant {mutant['id']}: the text to replace occurs {count} times in "
                         f"{mutant['file']} (must be once): {mutant['old']!r}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(mutant["old"], mutant["new"]))


def lab_losses(report):
    """{LAB_RUBRIC pattern: points lost} of a grade report (rows that lost nothing left out)."""
    from labkit.staff.points import lab_row
    lost = {}
    for row in report["tests"]:
        found = lab_row(row["test"])
        if found and row["max_points"] - row["points"] > 1e-9:
            lost[found[0]] = lost.get(found[0], 0.0) + row["max_points"] - row["points"]
    return {k: round(v, 2) for k, v in lost.items()}


def run_one(mutant, workdir, stu_src=None, timeout=1800):
    """Grade one mutant; returns a result dict (lost rows, public failures, verdict)."""
    stu_src = stu_src or os.path.join(ROOT, "stu_upload")
    folder = os.path.join(workdir, mutant["id"])
    stu = os.path.join(folder, "stu_upload")
    try:
        apply(mutant, stu_src, stu)
    except (ValueError, OSError) as exc:
        return {"id": mutant["id"], "file": mutant["file"], "mistake": mutant["mistake"],
                "expected_rows": sorted(mutant["rows"]), "ok": False, "problem": str(exc)}
    report_path = os.path.join(folder, "grade.json")
    modules = [os.path.splitext(os.path.basename(p))[0] for p in mutant["public"]]
    keyword = " or ".join(modules + EXPERIMENT_MODULES[mutant["file"]])
    from labkit.staff.grade import pytest_command
    cmd = pytest_command(["-q", "-p", "no:cacheprovider", f"--stu-dir={stu}", "--sandbox=off",
                          "--grade-manifest=none", f"--hidden={HIDDEN}",
                          f"--grade-json={report_path}", f"--test-timeout={TEST_TIMEOUT}",
                          "-k", keyword],
                         [os.path.join(ROOT, t) for t in mutant["public"]])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    result = {"id": mutant["id"], "file": mutant["file"], "mistake": mutant["mistake"],
              "expected_rows": sorted(mutant["rows"])}
    if not os.path.exists(report_path):
        result.update(ok=False, problem=f"no grade report (exit {proc.returncode}): "
                      f"{(proc.stderr or proc.stdout)[-600:]}")
        return result
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    public = [r for r in report["tests"] if r["test"].startswith("tests/")
              and r["result"] in ("failed", "error")]
    pattern = re.compile(mutant["message"])
    named = [r for r in public if pattern.search(r["message"] or "")
             and not BARE.search(r["message"] or "")]
    lost = lab_losses(report)
    problems = []
    if not public:
        problems.append("no public test fails")
    elif not named:
        problems.append(f"no public failure names it (/{mutant['message']}/): "
                        f"{public[0]['test']}: {public[0]['message']}")
    if set(lost) != set(mutant["rows"]):
        problems.append(f"lab rows losing points {sorted(lost)}, expected {sorted(mutant['rows'])}")
    result.update(ok=not problems, problem="; ".join(problems), lost=lost,
                  lab_points_lost=round(sum(lost.values()), 2),
                  public_test=(named or public or [{"test": ""}])[0]["test"],
                  public_message=(named or public or [{"message": ""}])[0]["message"])
    return result


def run_all(mutants, jobs=2, workdir=None):
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="labkit-mutants-")
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(lambda m: run_one(m, workdir), mutants))
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def table(results):
    lines = ["| mutant | file | public test that fails | lab points lost (row) |", "|---|---|---|---|"]
    for r in results:
        rows = ", ".join(f"{p.split('::')[-1].rstrip('*')} {v:g}" for p, v in
                         sorted(r.get("lost", {}).items()))
        flag = "" if r.get("ok") else f" **FAILED: {r.get('problem')}**"
        lines.append(f"| {r['id']} ({r['mistake']}) | {r['file']} | "
                     f"{r.get('public_test', '').split('::')[-1]} | "
                     f"{r.get('lab_points_lost', 0):g} ({rows}){flag} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Grade the mutation catalogue.")
    p.add_argument("--only", nargs="*", default=None, metavar="ID", help="these mutants only")
    p.add_argument("--jobs", type=int, default=2, help="mutants graded at once (default 2)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    mutants = load_catalogue()
    if args.only:
        unknown = set(args.only) - {m["id"] for m in mutants}
        if unknown:
            print(f"error: unknown mutant(s) {sorted(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m["id"] in args.only]
    results = run_all(mutants, args.jobs)
    print(table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
