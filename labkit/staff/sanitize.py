"""Text a submission controls (exception messages and class names, prints, file names),
made safe before it reaches a terminal, a JSON or CSV file or a Gradescope export.

``clean_text``: terminal escape sequences (CSI, OSC, DCS/SOS/PM/APC, two-character ESC
sequences, 8-bit CSI) are removed; every other control character (C0 but newline and tab,
DEL, C1), carriage returns (they let a line overwrite itself), Unicode line/paragraph
separators and bidirectional overrides (they reorder what a terminal shows) become U+FFFD;
lone surrogates (not encodable as UTF-8: the CSV writer failed on them) become U+FFFD; the
result is bounded to ``limit`` characters. ``clean_tree`` applies it to every string (keys
too) of a JSON-like value (dicts, lists, tuples).
"""
import re

REPLACEMENT = "\ufffd"
DEFAULT_LIMIT = 100_000

_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"                      # CSI: colours, cursor moves, erase
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"            # OSC: titles, hyperlinks
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"                 # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-~]?"                              # two-character ESC sequences
    r"|\x9b[0-?]*[ -/]*[@-~]?")                       # 8-bit CSI
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f"
                       "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean_text(text, limit=DEFAULT_LIMIT, newlines=True):
    """``text`` (any object: ``str()`` of it) without escapes or control characters, valid
    UTF-8, at most ``limit`` characters (cut with "..."); ``newlines=False`` also turns
    newlines and tabs into spaces (one line, for tables)."""
    if not isinstance(text, str):
        text = str(text)
    text = _ESCAPES.sub("", text.replace("\r\n", "\n"))
    text = _CONTROLS.sub(REPLACEMENT, text)
    if not newlines:
        text = text.replace("\n", " ").replace("\t", " ")
    if limit is not None and len(text) > limit:
        text = text[:max(limit - 3, 0)] + "..."
    return text


def clean_tree(value, limit=DEFAULT_LIMIT):
    """A copy of ``value`` with ``clean_text`` applied to every string in it (dict keys
    too); numbers, booleans and None unchanged."""
    if isinstance(value, str):
        return clean_text(value, limit)
    if isinstance(value, dict):
        return {clean_tree(k, limit) if isinstance(k, str) else k: clean_tree(v, limit)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [clean_tree(v, limit) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def is_clean(text):
    """True when ``text`` has nothing ``clean_text`` would change (its limit aside)."""
    return clean_text(text, limit=None) == text


class CleanRepr:
    """A pytest failure representation holding cleaned text (``toterminal``, ``str``) and
    the crash location with a cleaned message (``reprcrash``, for the short summary):
    put in place of a report's ``longrepr`` whose text a submission made unsafe."""

    def __init__(self, text, reprcrash=None):
        self.text, self.reprcrash = text, reprcrash

    def toterminal(self, tw):
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self):
        return self.text


def clean_report(report):
    """Clean a pytest report's ``longrepr`` in place (what pytest prints itself: the short
    test summary, tracebacks, skip reasons) when its text is not clean already. The crash
    message of the short summary becomes one line: on CI (``CI`` set) or with ``-vv``
    pytest prints it whole, and a newline in it would start a line the submission wrote
    (a forged "GRADE: ..." line)."""
    longrepr = report.longrepr
    if longrepr is None:
        return
    if isinstance(longrepr, tuple):             # (path, line, reason) of a skip
        report.longrepr = tuple(clean_text(v, newlines=False) if isinstance(v, str) else v
                                for v in longrepr)
        return
    text = report.longreprtext or ""
    text_clean = is_clean(text)
    crash = getattr(longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if text_clean and (not isinstance(message, str) or
                       clean_text(message, limit=None, newlines=False) == message):
        return
    if crash is not None:
        try:
            crash = type(crash)(path=clean_text(crash.path), lineno=crash.lineno,
                                message=clean_text(crash.message, newlines=False))
        except Exception:                       # another pytest's class: no summary text
            crash = None
    if text_clean:
        try:                                    # the text as it is, the summary's line
            longrepr.reprcrash = crash          # cleaned
            return
        except Exception:
            pass
    report.longrepr = CleanRepr(clean_text(text), crash)
