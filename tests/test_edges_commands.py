"""Issue 21, the error rule on every path of every command: a bad command line is ONE
``error:`` line naming the option and what to do, exit 2, no usage block, no traceback
(cli.LabParser), for exp 3.1, exp 3.2 and calibrate. Each case runs in a subprocess."""
import os
import subprocess
import sys

import pytest

from labkit.runtime.cli import LabParser, usage_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"3.1": [os.path.join(ROOT, "main_exp_3_1.py")],
            "3.2": [os.path.join(ROOT, "main_exp_3_2.py")],
            "calibrate": ["-m", "labkit.runtime.calibrate"],
            "batch_grade": ["-m", "labkit.batch_grade"]}


def run(command, *args, cwd=ROOT, flags=()):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *flags, *COMMANDS[command], *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def assert_one_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len([x for x in lines if x.startswith("error:")]) == 1, r.stderr
    assert all(x.startswith(("error:", "  ", "warning:")) for x in lines if x.strip()), r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


@pytest.mark.parametrize("command,args,needles", [
    ("3.1", ["--top-k", "x"], ["--top-k", "whole number"]),
    ("3.1", ["--layers", "zz"], ["--layers", "'fast'"]),
    ("3.1", ["--image"], ["--image", "needs a value"]),
    ("3.1", ["--bogus"], ["--bogus", "spelling"]),
    ("3.1", ["--top-k", "0"], ["--top-k", "at least 1"]),
    ("3.1", ["--d"], ["--d", "in full"]),
    ("3.2", ["--runs", "1.5"], ["--runs", "whole number"]),
    ("3.2", ["--runs", "0"], ["--runs", "at least 1"]),
    ("3.2", ["extra"], ["extra"]),
    ("calibrate", ["--out"], ["--out", "needs a value"]),
    ("calibrate", ["--images"], ["--images", "needs a value"]),
    ("batch_grade", [], ["missing submissions"]),
    ("batch_grade", ["subs", "--out", "x.csv", "--jobs", "q"], ["--jobs", "whole number"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_command_line_is_one_error_line(command, args, needles):
    assert_one_error(run(command, *args), *needles)


def test_help_still_prints_usage():
    r = run("3.1", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python main_exp_3_1.py")


def test_labparser_error_exits_2_with_one_line(capsys):
    p = LabParser(prog="prog")
    p.add_argument("--n", type=int, default=3)
    with pytest.raises(SystemExit) as err:
        p.parse_args(["--n", "three"])
    assert err.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith("error: --n")
    assert "usage" not in out.err and "prog --help" in out.err


@pytest.mark.parametrize("message,needle", [
    ("argument --x: invalid float value: 'a'", "not a number"),
    ("argument -s/--seed: invalid int value: 'a'", "--seed 'a': not a whole number"),
    ("argument --m: not allowed with argument --n", "only one"),
    ("the following arguments are required: submissions, --out", "missing submissions, --out"),
    ("something else", "something else (`p --help`"),
])
def test_usage_message(message, needle):
    assert needle in usage_message(message, "p")
