"""Fingerprints of the staff files a submission must not change, and hidden-text redaction."""
import hashlib
import os
import site
import sys

from labkit.staff.sandbox.process import DRIVERS, ROOT


def _files(path):
    if os.path.isfile(path):
        yield path
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".pytest_cache"))
        for n in sorted(filenames):
            if not n.endswith(".pyc"):
                yield os.path.join(dirpath, n)


def site_dirs():
    dirs = set(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    dirs.update(p for p in sys.path if p.endswith("site-packages"))
    return sorted(d for d in dirs if os.path.isdir(d))


def protected_paths(root=ROOT, hidden=None):
    """tests, tests_hidden, the manifest (in tests/), the reference stu_upload, labkit, the
    drivers, pytest.ini, and the Python environment's start-up hooks (.pth, sitecustomize)."""
    paths = [os.path.join(root, p) for p in ("tests", "stu_upload", "labkit", "pytest.ini",
                                             *DRIVERS, "tests_staff")]
    if hidden:
        paths.append(hidden)
    return [p for p in paths if os.path.exists(p)]


def fingerprint(root=ROOT, hidden=None):
    """{path: sha256} of the protected files, plus the names of every entry of the
    site-packages folders and the contents of their .pth / sitecustomize files."""
    out = {}
    for top in protected_paths(root, hidden):
        for f in _files(top):
            try:
                with open(f, "rb") as fh:
                    out[f] = hashlib.sha256(fh.read()).hexdigest()
            except OSError as exc:
                out[f] = f"unreadable: {exc.strerror}"
    for d in site_dirs():
        names = sorted(os.listdir(d))
        out[d + "/<entries>"] = hashlib.sha256("\n".join(names).encode()).hexdigest()
        for n in names:
            if n.endswith(".pth") or n.startswith(("sitecustomize", "usercustomize")):
                f = os.path.join(d, n)
                try:
                    with open(f, "rb") as fh:
                        out[f] = hashlib.sha256(fh.read()).hexdigest()
                except OSError:
                    out[f] = "unreadable"
    return out


def changes(before, after):
    """['changed: path', 'added: path', 'removed: path'] between two fingerprints."""
    out = []
    for k in sorted(set(before) | set(after)):
        if k not in after:
            out.append(f"removed: {k}")
        elif k not in before:
            out.append(f"added: {k}")
        elif before[k] != after[k]:
            out.append(f"changed: {k}")
    return out


# what ships in the student kit as text (labkit.staff.kit): a message made of this text
# reveals nothing of the hidden tests, even where the hidden tests say the same
KIT_TEXT = ("tests", os.path.join("labkit", "runtime"), "stu_upload", "README.zh-CN.md",
            "pycnml.py", "sitecustomize.py", "pycnml_api.md")


def kit_text_paths(root=ROOT):
    """The text files of the repository that ship in the student kit (the public tests, the
    runtime, the student files, the drivers, the root files a student reads)."""
    paths = [os.path.join(root, p) for p in KIT_TEXT]
    paths += [os.path.join(root, n) for n in DRIVERS]
    return [p for p in paths if os.path.exists(p)]


def _corpus(paths, suffixes):
    parts = []
    for top in paths:
        for f in _files(top):
            if f.endswith(suffixes):
                with open(f, encoding="utf-8", errors="replace") as fh:
                    parts.append(" ".join(fh.read().split()))
    return "\n".join(parts)


class Redactor:
    """Withholds the parts of a message that quote the hidden tests' source (24 characters
    in a row) and appear nowhere in the student kit (``public``: paths, default
    ``kit_text_paths()``). A public test's message, or a hidden test's message made of the
    kit's words (compare.py's "yours ... vs expected ..."), is kept; the rest of a message
    that quotes a hidden test is kept too, with each quoted run replaced by ``[withheld]``."""
    WINDOW = 24
    MARK = "[withheld: hidden test]"

    def __init__(self, hidden=None, public=None):
        self.corpus = ""
        self.public = ""
        if hidden and os.path.isdir(hidden):
            self.corpus = _corpus([hidden], (".py",))
            self.public = _corpus(kit_text_paths() if public is None else public,
                                  (".py", ".md", ".txt"))

    def __call__(self, text):
        if not self.corpus or not text:
            return text
        flat = " ".join(str(text).split())
        hidden = [False] * len(flat)
        for i in range(0, max(0, len(flat) - self.WINDOW) + 1):
            window = flat[i:i + self.WINDOW]
            if window in self.corpus and window not in self.public:
                hidden[i:i + self.WINDOW] = [True] * self.WINDOW
        if not any(hidden):
            return text
        out, i = [], 0
        while i < len(flat):
            if hidden[i]:
                while i < len(flat) and hidden[i]:
                    i += 1
                out.append(self.MARK)
            else:
                out.append(flat[i])
                i += 1
        return "".join(out)
