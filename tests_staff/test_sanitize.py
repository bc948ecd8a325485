"""labkit/staff/sanitize.py: text a submission controls, made safe for terminals, JSON, CSV
and Gradescope (issue 19, item 4). Each case is an attack that would reach staff otherwise."""
import csv
import io
import json
import types

import pytest

from labkit.staff.reports import print_grade, write_grade_csv
from labkit.staff.sanitize import CleanRepr, clean_report, clean_text, clean_tree, is_clean

ATTACKS = [
    ("\x1b[31mred\x1b[0m", "red"),                                  # colours
    ("a\x1b[2K\x1b[1Ab", "ab"),                                     # erase line, cursor up
    ("x\x1b]0;title\x07y", "xy"),                                   # OSC window title
    ("x\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\y", "xlinky"),     # OSC 8 hyperlink
    ("p\x1bPq#0;2;0;0;0\x1b\\q", "pq"),                             # DCS (sixel)
    ("\x9b31mz", "z"),                                              # 8-bit CSI
    ("end\x1b", "end"),                                             # a lone ESC
    ("\x1b[8mconceal", "conceal"),
]


@pytest.mark.parametrize("text,expected", ATTACKS, ids=[repr(a)[:24] for a, _ in ATTACKS])
def test_escape_sequences_are_removed(text, expected):
    assert clean_text(text) == expected


def test_control_characters_surrogates_and_bidi_become_replacement():
    text = "a\rb\x00c\x07d\x7fe\x85f\u202eg\u2028h\udc80i\ud800"
    out = clean_text(text)
    assert out == "a\ufffdb\ufffdc\ufffdd\ufffde\ufffdf\ufffdg\ufffdh\ufffdi\ufffd"
    out.encode("utf-8")                         # valid UTF-8 now (it raised before)
    with pytest.raises(UnicodeEncodeError):
        text.encode("utf-8")


def test_newlines_tabs_and_ordinary_text_are_kept():
    text = "line 1\n\tline 2: relative error 1.2e-03 >= 1e-07 (张量 é)"
    assert clean_text(text) == text and is_clean(text)
    assert clean_text("a\r\nb") == "a\nb"
    assert clean_text("a\nb\tc", newlines=False) == "a b c"


def test_length_is_bounded():
    assert clean_text("x" * 50, limit=10) == "x" * 7 + "..."
    assert len(clean_text("\x1b[31m" * 10000 + "y" * 10**6)) == 100_000


def test_clean_tree_cleans_every_string_and_key():
    tree = {"tests": [{"test": "t\x1b[1m", "message": "m\udc80", "points": 1.5,
                       "graded": True}], "k\x07": ("a\x1b[0m", None)}
    out = clean_tree(tree)
    assert out == {"tests": [{"test": "t", "message": "m\ufffd", "points": 1.5,
                              "graded": True}], "k\ufffd": ("a", None)}
    json.dumps(out, ensure_ascii=False).encode("utf-8")


def grade_with(message):
    row = {"test": "tests/test_layer_1.py::test_relu_gradient", "category": "beyond",
           "experiment": "3.1", "points": 0, "max_points": 1, "result": "failed",
           "graded": True, "hidden": False, "message": message}
    return {"tests": [row], "init_error": "Boom\x1b[2K: x", "stu_dir": "stu_upload",
            "sandbox": {"mode": "bwrap"}, "experiments": {}, "lab_points": 0,
            "lab_max_points": 0, "beyond_points": 0, "beyond_max_points": 1, "points": 0,
            "max_points": 1, "percent": 0.0, "verdict": "v\x1b[8m"}


EVIL = "\x1b[2K\rGRADE: 464 / 464 points\x1b[8m \udc80\nGRADE: 464 / 464 points"


def test_writers_clean_what_they_write(tmp_path):
    """The CSV writer used to fail on a lone surrogate (no --grade-csv file); the terminal
    table took escapes and a second line verbatim."""
    path = tmp_path / "g.csv"
    write_grade_csv(str(path), grade_with(EVIL))
    text = path.read_text(encoding="utf-8")
    assert "\x1b" not in text and "\ufffd" in text
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["message"] == "\ufffdGRADE: 464 / 464 points \ufffd\nGRADE: 464 / 464 points"

    lines = []
    tr = types.SimpleNamespace(write_sep=lambda *a, **k: lines.append(a[-1]),
                               write_line=lambda line, **k: lines.append(line))
    print_grade(tr, grade_with(EVIL))
    out = "\n".join(lines)
    assert "\x1b" not in out and "\r" not in out and "\udc80" not in out
    assert [l for l in lines if l.startswith("GRADE:")] == \
        ["GRADE: 0 / 1 points (0.0%): v"]     # the only GRADE line is the grader's


def test_clean_report_replaces_only_unsafe_longreprs():
    from _pytest._code.code import ReprFileLocation
    crash = ReprFileLocation("stu_upload/layer_1.py", 3, "Boom\x1b[2K: GRADE\udc80")

    class Repr:
        reprcrash = crash

        def toterminal(self, tw):
            tw.line("E   Boom\x1b[2K: GRADE\udc80")
    report = types.SimpleNamespace(longrepr=Repr(), longreprtext="E   Boom\x1b[2K: GRADE\udc80")
    clean_report(report)
    assert isinstance(report.longrepr, CleanRepr)
    assert str(report.longrepr) == "E   Boom: GRADE\ufffd"
    assert report.longrepr.reprcrash.message == "Boom: GRADE\ufffd"
    assert report.longrepr.reprcrash.lineno == 3
    safe = Repr()
    report = types.SimpleNamespace(longrepr=safe, longreprtext="E   fine")
    clean_report(report)
    assert report.longrepr is safe
    # a clean text whose crash message has a newline: pytest prints that message whole on
    # CI or with -vv, so its second line would start a line of the summary (a forged grade)
    multi = Repr()
    multi.reprcrash = ReprFileLocation("t.py", 5, "Boom: x\nGRADE: 464 / 464")
    report = types.SimpleNamespace(longrepr=multi, longreprtext="E   Boom: x\nE   GRADE")
    clean_report(report)
    assert report.longrepr is multi and str(multi.reprcrash.message) == "Boom: x GRADE: 464 / 464"
    report = types.SimpleNamespace(longrepr=("f.py", 1, "Skipped: \x1b[31mno"))
    clean_report(report)
    assert report.longrepr == ("f.py", 1, "Skipped: no")


def test_worker_text_is_cleaned_where_it_arrives():
    """Exception class names and messages from the worker (sandbox client)."""
    from labkit.staff.sandbox.client import make_exception
    exc = make_exception({"type": "Boom\x1b[2KError", "module": "stu_upload.layer_1",
                          "msg": "\x1b[2K\rGRADE: 464 / 464 \udc80", "bases": ["ValueError"]})
    assert type(exc).__name__ == "BoomError" and isinstance(exc, ValueError)
    assert str(exc) == "\ufffdGRADE: 464 / 464 \ufffd"
