"""Grade one folder: ``python -m labkit.staff.grade --stu-dir PATH [options] [tests]``.

The one documented way to grade a single folder. pytest chooses its rootdir and ini file,
and loads the ``conftest.py`` of the paths it is given, *before* it knows the grading plugin's
options: ``python -m pytest --stu-dir PATH`` (a space) makes pytest take PATH for a test
path, read the student's ``pytest.ini`` and import the student's ``conftest.py`` as root,
before any of our code runs. This wrapper parses the path options itself (a space or ``=``
both work here), checks them, and runs pytest from this repository in a form no argument can
change: ``-c ROOT/pytest.ini --rootdir=ROOT --stu-dir=PATH``, every test path absolute and
inside the repository (or the hidden tests folder). Every internal invocation
(``run_grading``, the mutation catalogue) builds its command with ``pytest_command``.

    python -m labkit.staff.grade --stu-dir PATH                       # table + GRADE line
    python -m labkit.staff.grade --stu-dir PATH --hidden tests_hidden --grade-json r.json
    python -m labkit.staff.grade --stu-dir PATH --test-timeout 30 tests/test_layer_1.py

Other options go to pytest unchanged (``-q``, ``-x``, ``-k EXPR``, ``--sandbox MODE`` ...).
"""
import os
import sys

from labkit.staff.points import ROOT

# the grading plugin's options that take a value, and pytest's usual ones: a value given with
# a space is kept with its option (never taken for a test path)
PATH_OPTIONS = ("--stu-dir", "--hidden", "--grade-json", "--grade-csv", "--grade-manifest",
                "--grade-profile", "--basetemp")
VALUE_OPTIONS = PATH_OPTIONS + ("--test-timeout", "--setup-timeout", "--sandbox", "--sandbox-memory",
                                "--call-timeout", "-k", "-m", "--tb", "-p", "-o",
                                "--maxfail", "--deselect", "-W", "--durations")


class UsageError(Exception):
    pass


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def split_args(argv, cwd=None):
    """(options as OPTION=VALUE with absolute paths, test paths made absolute); raises
    UsageError for a test path outside the repository and the hidden tests folder."""
    cwd = cwd or os.getcwd()
    opts, tests, hidden, i = [], [], None, 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if a.startswith("--") and name in VALUE_OPTIONS and eq:
            pass
        elif a in VALUE_OPTIONS:
            if i + 1 >= len(argv):
                raise UsageError(f"{a}: needs a value")
            name, value, i = a, argv[i + 1], i + 1
        elif a.startswith("-") or not a:
            opts.append(a)
            i += 1
            continue
        else:
            tests.append(a)
            i += 1
            continue
        if name in PATH_OPTIONS and value not in ("", "none"):
            value = os.path.normpath(os.path.join(cwd, value))
        if name == "--hidden":
            hidden = value
        # long options as one argument; short ones ("-k", "EXPR") stay two
        opts += [f"{name}={value}"] if name.startswith("--") else [name, value]
        i += 1
    absolute = []
    for t in tests:
        path, sep, rest = t.partition("::")
        full = os.path.normpath(os.path.join(cwd, path))
        if not (_inside(full, ROOT) or (hidden and _inside(full, hidden))):
            raise UsageError(
                f"{t}: a test path outside this repository ({ROOT}); refused (was it the value "
                f"of an option written with a space? write OPTION=VALUE)")
        absolute.append(full + sep + rest)
    return opts, absolute


def pytest_command(options, tests=(), python=None, root=ROOT):
    """The pytest command line that grades with this repository's configuration whatever
    the arguments: its ini file and rootdir fixed, options as OPTION=VALUE (run it with
    cwd=root)."""
    return [python or sys.executable, "-m", "pytest", "-c", os.path.join(root, "pytest.ini"),
            f"--rootdir={root}", *options, *tests]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    try:
        opts, tests = split_args(argv)
        stu = [o for o in opts if o.startswith("--stu-dir=")]
        if stu:
            path = stu[-1].partition("=")[2]
            if not os.path.isdir(path):
                raise UsageError(f"--stu-dir {path}: no such folder")
        elif "--grade" not in opts:
            raise UsageError("give --stu-dir PATH (the folder to grade) or --grade (./stu_upload)")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cmd = pytest_command(opts, tests)
    os.chdir(ROOT)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
