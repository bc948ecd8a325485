"""The grading CLI and the grader run in a subprocess: ``run_grading`` (used by batch grading
and the benchmarks) and ``python -m labkit.staff.grading manifest``."""
import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile

from labkit.staff._stu_site.sitecustomize import PACKAGE
from labkit.staff.points import (MANIFEST_NAME, ROOT, category_for, experiment_for,
                                  never_graded, points_for)
from labkit.staff.reports import read_json
from labkit.staff.sandbox.process import THREAD_VARS


# ------------------------------------------------------------------------------- manifest
def run_grading(stu_dir, json_path, extra=(), hidden=None, manifest=None, timeout=None,
                cwd=ROOT, sandbox=None, split=1, threads=None, skip_ungraded=False):
    """Grade ``stu_dir`` in a fresh ``python -m pytest``; returns (report or None, process).
    On ``timeout`` the grader's process group and the submission's processes are killed and
    ``subprocess.TimeoutExpired`` is raised (a partial report may be at ``json_path``).
    ``split``: grade the test files (those named in ``extra``, else all) in that many
    groups at once, each a grading of its own (labkit.staff.split), and write the merged
    report; the process returned then holds every part's output. ``threads``: the BLAS and
    engine threads of each part's processes (default: the cores shared among the parts;
    a variable already set is kept). ``skip_ungraded``: run the graded tests only (the same
    points; the files of ungraded checks only are not even collected)."""
    from labkit.staff.grade import pytest_command, split_args
    opts = ["-q", "-p", "no:cacheprovider",
            "-p", "no:hypothesispytest",     # @given still works; saves its start-up per run
            f"--stu-dir={os.path.abspath(stu_dir)}"]
    if manifest:
        opts += [f"--grade-manifest={manifest}"]
    if sandbox:
        opts += [f"--sandbox={sandbox}"]
    if skip_ungraded:
        opts += ["--skip-ungraded"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "LABKIT_STU_DIR", "LABKIT_SANDBOX"))}
    env.update(PYTHONDONTWRITEBYTECODE="1")
    if sandbox in (None, "auto", "bwrap", "uid"):     # the submission runs as another user
        env.pop("PYTHONDONTWRITEBYTECODE")
        env["PYTHONPYCACHEPREFIX"] = bytecode_cache()
    parts = None
    from labkit.staff import split as splitting
    named = split_args(list(extra), cwd=cwd)[1]
    whole_files = not any("::" in t or os.path.isdir(t) for t in named)

    def without_named(args):
        return [a for a in args if os.path.normpath(os.path.join(cwd, a)) not in named]
    files = named
    if skip_ungraded and whole_files and manifest != "none":
        files = splitting.graded_files(named or splitting.test_files(cwd, hidden),
                                       _manifest_tests(manifest, cwd), hidden) or named
        if split <= 1 and files:    # named: the files of ungraded checks are not collected
            extra = without_named(extra) + files
    if split > 1 and whole_files:       # the files named (whole files only), else every one
        parts = splitting.plan(files or splitting.test_files(cwd, hidden), split, hidden)
        if len(parts) > 1:      # each part names its own files instead
            extra = without_named(extra)
    n_parts = len(parts) if parts and len(parts) > 1 else 1
    if threads is not None or n_parts > 1:      # the parts (or jobs) run side by side
        threads = threads or max(1, (os.cpu_count() or 1) // n_parts)
        for key in THREAD_VARS:
            env.setdefault(key, str(threads))
    if n_parts == 1:
        cmd = pytest_command(opts + [f"--grade-json={os.path.abspath(json_path)}"] +
                             ([f"--hidden={os.path.abspath(hidden)}"] if hidden else []) +
                             list(extra), root=cwd)     # ini and rootdir fixed, OPTION=VALUE
        (proc,) = _run_parts([(cmd, json_path + ".sandbox")], cwd, env, timeout)
        return read_json(json_path), proc
    jobs, paths = [], []
    for i, files in enumerate(parts):
        path = f"{os.path.abspath(json_path)}.part{i}"
        paths.append(path)
        has_hidden = hidden and any(f.startswith(os.path.abspath(hidden) + os.sep)
                                    for f in files)
        cmd = pytest_command(opts + [f"--grade-json={path}"] +
                             ([f"--hidden={os.path.abspath(hidden)}"] if has_hidden else []) +
                             list(extra) + files, root=cwd)
        jobs.append((cmd, path + ".sandbox"))
    try:
        procs = _run_parts(jobs, cwd, env, timeout)
    finally:        # (also on a timeout: the parts' partial reports, merged)
        reports = [read_json(p) for p in paths]
        for p in paths:
            with contextlib.suppress(OSError):
                os.unlink(p)
        report = None
        if all(r is not None for r in reports):
            from labkit.staff import split as splitting
            from labkit.staff.reports import _write_json
            report = splitting.merge(reports, _manifest_tests(manifest, cwd))
            _write_json(json_path, report)
    proc = subprocess.CompletedProcess(
        [p.args for p in procs], max(p.returncode for p in procs),
        "".join(p.stdout for p in procs), "".join(p.stderr for p in procs))
    return report, proc


def bytecode_cache():
    """The grader's compiled modules, kept between gradings (pytest rewrites the asserts of
    every test module it imports, about 2 s a grading, and caches the result with the rest
    of the bytecode: ``PYTHONPYCACHEPREFIX``). A folder only this user can open, made or
    checked (a real folder, its owner, mode 0700); one someone else made first is never
    used (a fresh private one instead). Sandboxed gradings only: there the submission runs
    as another user and cannot write it; the sandbox's own processes run with -E -B."""
    import stat
    import tempfile
    folder = os.path.join(tempfile.gettempdir(), f"labkit-pycache-{os.geteuid()}")
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix="labkit-pycache-")
    st = os.lstat(folder)
    if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) == 0o700):
        return tempfile.mkdtemp(prefix="labkit-pycache-")
    return folder


def _run_parts(jobs, cwd, env, timeout):
    """Run each (command, sandbox info path) at once; wait for all, within ``timeout``
    (then every part's process group and submission are killed: TimeoutExpired)."""
    import time
    deadline = None if timeout is None else time.monotonic() + timeout
    popen = getattr(subprocess.Popen, "_labkit_base", subprocess.Popen)
    running = []
    try:
        for cmd, info in jobs:
            running.append((popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=dict(env, LABKIT_SANDBOX_INFO=info),
                                  start_new_session=True), info))
        done = []
        for p, _ in running:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out, err = p.communicate(timeout=left)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        return done
    finally:            # also on TimeoutExpired, which then propagates
        for p, info in running:
            _kill_group(p)
            _end_submission(info)
            if p.returncode is None:
                with contextlib.suppress(Exception):
                    p.communicate(timeout=5)


def _manifest_tests(manifest, cwd):
    if manifest == "none":
        return {}
    data = read_json(manifest or os.path.join(cwd, MANIFEST_NAME))
    return data.get("tests", {}) if isinstance(data, dict) else {}


def _kill_group(p):
    from labkit.staff.sandbox import process
    process.kill_group(p)


def _end_submission(info_path):
    """Kill what a (killed) grader's submission left running: its uid's or token's processes."""
    from labkit.staff.sandbox import process
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return 0
    uid = info.get("uid")
    found = process.kill_processes(uid, info["token"] if uid is None else None)
    for cg in info.get("cgroups") or []:
        found += process.Cgroup.remove_path(cg)
    scratch = info.get("scratch", "")
    if isinstance(scratch, str) and scratch and os.path.isfile(
            os.path.join(scratch, process.MARKER)):     # (root's marker: our scratch folder)
        import shutil
        work = os.path.join(scratch, "work")
        if os.path.ismount(work):           # its size-limited tmpfs (Scratch._mount_work)
            subprocess.run(["umount", "-l", work], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.unlink(info_path)
    return found


def build_manifest(hidden=None, out=None, root=ROOT):
    """Grade the reference and a fresh kit with every test graded; keep the tests that pass
    on the reference, graded when they fail on the kit."""
    from labkit.staff.kit import write_kit
    out = out or os.path.join(root, MANIFEST_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        kit = os.path.join(tmp, "kit")
        write_kit(kit, root=root)
        reports = {}
        for name, stu in (("reference", os.path.join(root, PACKAGE)),
                          ("kit", os.path.join(kit, PACKAGE))):
            print(f"running the suite on the {name} ...", flush=True)
            report, proc = run_grading(stu, os.path.join(tmp, name + ".json"), hidden=hidden,
                                       manifest="none", cwd=root, sandbox="off")
            if report is None:
                raise SystemExit(f"the {name} run wrote no report:\n{proc.stdout[-3000:]}"
                                 f"\n{proc.stderr[-3000:]}")
            reports[name] = {r["test"]: r for r in report["tests"]}
    ref, kit = reports["reference"], reports["kit"]
    broken = [f"{t}: {r['result']} {r['message']}" for t, r in ref.items()
              if r["result"] not in ("passed", "skipped")]
    if broken:
        raise SystemExit("the reference does not pass its own tests:\n  " + "\n  ".join(broken))
    tests = {}
    for test_id, r in sorted(ref.items()):
        k = kit.get(test_id, {"result": "missing", "message": ""})
        graded = r["result"] == "passed" and k["result"] != "passed" and \
            not never_graded(test_id)
        tasks = re.findall(r"[A-Za-z_]\w*", k["message"].split("not implemented yet:", 1)[1]) \
            if "not implemented yet:" in k["message"] else []
        tests[test_id] = {"module": r["module"], "graded": graded, "hidden": r["hidden"],
                          "tasks": tasks, "category": category_for(test_id),
                          "experiment": experiment_for(test_id)}
    manifest = {"about": "tests that must exist when grading, and which are graded (pass on "
                "the reference, fail on the blank kit). Rebuild: python -m labkit.staff.grading "
                "manifest [--hidden DIR]", "tests": tests}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    n_graded = sum(v["graded"] for v in tests.values())
    print(f"{out}: {len(tests)} tests, {n_graded} graded "
          f"({sum(v['hidden'] for v in tests.values())} hidden), "
          f"{_manifest_points(tests)} points")
    return manifest


def _manifest_points(tests):
    graded = [t for t, v in tests.items() if v["graded"]]
    lab = sum(points_for(t, graded) for t in graded if category_for(t) == "lab")
    beyond = sum(points_for(t, graded) for t in graded if category_for(t) == "beyond")
    return f"lab {lab:g} + beyond {beyond:g}"


def main(argv=None):
    p = argparse.ArgumentParser(description="Grading tools for course staff.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifest", help="rebuild tests/grading_manifest.json from the "
                       "reference and a fresh kit (runs the suite twice)")
    m.add_argument("--hidden", help="hidden tests folder to include (e.g. tests_hidden)")
    m.add_argument("--out", help=f"where to write it (default {MANIFEST_NAME})")
    args = p.parse_args(argv)
    if args.command == "manifest":
        build_manifest(args.hidden and os.path.abspath(args.hidden), args.out)
    return 0
