"""The grade report's redactor (labkit.staff.sandbox.integrity.Redactor): it withholds text
that quotes the hidden tests and appears nowhere in the student kit, and nothing else."""
import os

from labkit.staff.sandbox.integrity import Redactor, kit_text_paths

HIDDEN_SECRET = "the hidden case uses a 7x5 input with three tied maxima at (2, 3)"


def make(tmp_path, public_text):
    hidden = tmp_path / "hidden"
    hidden.mkdir(exist_ok=True)
    (hidden / "test_secret.py").write_text(
        "def test_x():\n"
        f"    assert False, 'forward: relative error {{err}} >= 1e-10'\n"
        f"    # {HIDDEN_SECRET}\n")
    public = tmp_path / "public"
    public.mkdir(exist_ok=True)
    (public / "test_public.py").write_text(public_text)
    return Redactor(str(hidden), public=[str(public)])


def test_text_only_in_the_hidden_tests_is_withheld(tmp_path):
    redact = make(tmp_path, "x = 1\n")
    out = redact(f"AssertionError: {HIDDEN_SECRET}; yours 2")
    assert "tied maxima" not in out and "7x5" not in out
    assert out.startswith("AssertionError:") and Redactor.MARK in out and "yours 2" in out
    # negative control: an empty hidden folder withholds nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Redactor(str(empty), public=[])(HIDDEN_SECRET) == HIDDEN_SECRET


def test_a_public_tests_words_are_kept_even_when_a_hidden_test_has_them(tmp_path):
    """The old redactor withheld a public test's 'forward: relative error ...' because a
    hidden test used the same words."""
    message = "conv forward: relative error 3.2e-01 >= 1e-10"
    assert Redactor.MARK in make(tmp_path, "x = 1\n")(message)        # without the kit text
    redact = make(tmp_path, "assert e < t, f'conv forward: relative error {e} >= {t}'\n")
    assert redact(message) == message


def test_messages_without_hidden_text_are_unchanged(tmp_path):
    redact = make(tmp_path, "")
    text = "fc d_weight: yours 1.5 vs expected 3 at index (0, 1)\n  second line"
    assert redact(text) == text


def test_the_kit_text_is_the_shipped_text():
    names = {os.path.basename(p) for p in kit_text_paths()}
    assert {"tests", "runtime", "stu_upload", "main_exp_3_1.py"} <= names
    assert not any(n in names for n in ("tests_hidden", "tests_staff", "staff", "engine"))


def test_compare_messages_of_the_hidden_tests_survive():
    """A failure of a hidden lab test made of compare.py's words keeps yours vs expected."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    redact = Redactor(os.path.join(root, "tests_hidden"))
    msg = ("conv forward output Y (eq. 3.3): yours 0.5 vs expected 1.25 at index (0, 1, 2, 3); "
           "error 0.6 > threshold 1e-10 (relative to max |expected| 1.25)")
    out = redact(msg)
    assert "yours 0.5 vs expected 1.25 at index (0, 1, 2, 3)" in out
    assert "threshold 1e-10" in out
