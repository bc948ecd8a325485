"""The one-line teaching messages of the grading plugin: why a test failed, why a test module
did not import."""
import os
import re

from labkit.staff._stu_site.sitecustomize import PACKAGE

NOT_IMPLEMENTED_RE = re.compile(r"NotImplementedError: ([A-Za-z_][A-Za-z0-9_]*):")


def _first_line(text, limit=300):
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def teaching_message(report, timeout):
    """One line that says why the test failed: the task not implemented yet, the time limit,
    or the first line of the assertion (which tensor, relative error, threshold)."""
    text = report.longreprtext or ""
    crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "") or ""
    tasks = NOT_IMPLEMENTED_RE.findall(crash) or NOT_IMPLEMENTED_RE.findall(text)
    if tasks:
        return "not implemented yet: " + ", ".join(dict.fromkeys(tasks))
    if "TestTimeout" in crash or "TestTimeout" in text:
        return f"time limit of {timeout:g} s exceeded (an endless loop, or far too slow)"
    for name, prefix in (("StudentTimeout", ""), ("StudentMemoryError", ""),
                         ("StudentCrash", "crashed: ")):
        m = re.search(name + r": (.*)", crash) or re.search(name + r": (.*)", text)
        if m:
            return prefix + _first_line(m.group(1))
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else text
        return "skipped: " + _first_line(str(reason)).replace("Skipped: ", "")
    if not crash:
        return _first_line(text)
    syntax = re.search(r"^\s*((?:Syntax|Indentation|Tab)Error\b.*)$", crash, re.M)
    where = re.search(r'File "([^"]+)", line (\d+)', crash)
    if syntax and where:        # a student file that does not compile (resolved lazily)
        return f"{syntax.group(1).strip()} ({os.path.basename(where.group(1))}, line " \
               f"{where.group(2)})"
    crash = re.sub(r"^(?:[A-Za-z_][\w]*\.)+(?=\w+(?:Error|Exception|Warning)\b)", "", crash)
    line = _first_line(crash)
    if line.startswith("assert ") or line in ("AssertionError", "assert False"):
        sources = [l[1:].strip() for l in text.splitlines() if l.startswith(">")]
        if sources:
            return f"assertion failed: {sources[-1]}"
    return line


def collect_error_message(text):
    """'SyntaxError: invalid syntax (layer_2.py, line 40)' from a collection error report."""
    lines = [l[1:].strip() for l in text.splitlines() if l.startswith("E ")]
    errors = [l for l in lines if re.match(r"[\w.]*(Error|Exception)\b", l)]
    msg = errors[-1] if errors else _first_line(text)
    where = re.findall(r'File "([^"]+)", line (\d+)', text)
    where = [w for w in where if f"{os.sep}{PACKAGE}" in w[0] or PACKAGE + "/" in w[0]]
    if where:
        msg += f" ({PACKAGE}/{os.path.basename(where[-1][0])}, line {where[-1][1]})"
    return "could not import the test module: " + msg
