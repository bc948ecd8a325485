"""Issue 21, numbers as the run will use them, property-based (Hypothesis, derandomized):
generated weights, learning rates and argument vectors either give settings a run can use
(finite, in range, weights that sum to 1 and none that vanish) or one UserError / exit 2 with
one `error:` line; never anything else (no overflowing sum turns the style off, no NaN
reaches step 1)."""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.runtime.cli import FLOAT32_TINY, LabParser, UserError, check_number, normalised_weights
from labkit.runtime.transfer_options import read_command_line

SETTINGS = settings(derandomize=True, max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
ANY_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                      st.sampled_from([0.0, 1.0, 1e308, 1.7e308, 1e-320, 5e-324, 1e-30, -0.0]))


@SETTINGS
@given(st.lists(ANY_FLOAT, min_size=1, max_size=6))
def test_normalised_weights_are_usable_or_refused(values):
    names = [f"w{i}" for i in range(len(values))]
    try:
        out = normalised_weights(values, "--x", names)
    except UserError as exc:
        text = str(exc)
        assert text.startswith("--x: ") and "\n" not in text
        bad = [v for v in values if not math.isfinite(v) or v < 0]
        assert bad or not max(values) > 0 or "vanishes" in text
        return
    assert all(math.isfinite(v) and v >= 0 for v in values) and max(values) > 0
    assert math.isclose(math.fsum(out), 1.0, rel_tol=1e-12)
    for v, w in zip(values, out):
        assert (w >= FLOAT32_TINY) if v > 0 else (w == 0)
    top = values.index(max(values))
    for v, w in zip(values, out):           # proportions kept where they are representable
        if v > 1e-300:
            assert math.isclose(w / out[top], v / values[top], rel_tol=1e-9)


def test_overflowing_sum_and_vanishing_weight_examples():
    assert normalised_weights([1e308, 1e308], "--style-blend", ["a", "b"]) == [0.5, 0.5]
    with pytest.raises(UserError, match="vanishes"):
        normalised_weights([1.0, 1e-320], "--style-layers", ["relu1_1", "relu2_1"])


@SETTINGS
@given(ANY_FLOAT, st.sampled_from([None, 0.0, -1.0]), st.booleans(),
       st.sampled_from([None, 1.0, 1e6]))
def test_check_number(value, low, low_ok, high):
    try:
        assert check_number(value, "--n", low=low, low_ok=low_ok, high=high) == value
    except UserError as exc:
        assert str(exc).startswith("--n ") and "finite" in str(exc)
        assert (not math.isfinite(value) or (low is not None and value <= low)
                or (high is not None and value > high))
        return
    assert math.isfinite(value)
    assert low is None or value > low or (low_ok and value == low)
    assert high is None or value <= high


TEXT_NUMBER = st.one_of(ANY_FLOAT.map(repr), st.sampled_from(["1e999", "-1e999", "abc", "",
                                                               "1,5", "0x10", " 2"]))
LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@st.composite
def transfer_argvs(draw):
    argv = ["--content", "c.png", "--style", "a.png", "b.png"]
    for flag in ("--lr", "--alpha", "--beta", "--tv-weight", "--style-scale", "--noise"):
        if draw(st.booleans()):
            argv += [flag, draw(TEXT_NUMBER)]
    if draw(st.booleans()):
        argv += ["--style-blend", draw(TEXT_NUMBER), draw(TEXT_NUMBER)]
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(LAYERS), min_size=1, max_size=4, unique=True))
        argv += ["--style-layers", ",".join(f"{n}:{draw(TEXT_NUMBER)}" for n in names)]
    return argv


@SETTINGS
@given(transfer_argvs())
def test_exp_3_3_numbers_usable_or_one_error(capsys, argv):
    try:
        args, _ = read_command_line(argv)
    except SystemExit as exc:                 # argparse: not a number at all
        err = capsys.readouterr().err
        assert exc.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
        assert "usage:" not in err
        return
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("--"), str(exc)
        return
    for name in ("lr", "alpha", "beta", "tv_weight", "style_scale", "noise"):
        assert math.isfinite(getattr(args, name)), name
    assert args.lr > 0 and args.style_scale > 0 and 0 <= args.noise <= 1
    for weights in (list(args.style_weights.values()), args.style_blend or [0.5, 0.5]):
        assert math.isclose(math.fsum(weights), 1.0, rel_tol=1e-9)
        assert all(w == 0 or w >= FLOAT32_TINY for w in weights)
    assert any(w > 0 for w in args.style_weights.values())


@SETTINGS
@given(st.lists(st.one_of(
    st.sampled_from(["--n", "--mode", "--file", "--flag", "--nope", "-x", "--", "--n=",
                     "--mode=b", "--fi"]),
    st.text(max_size=6)), max_size=6))
def test_labparser_any_argv_is_parsed_or_one_error(capsys, argv):
    p = LabParser(prog="prog")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--mode", choices=["a", "b"], default="a")
    p.add_argument("--file")
    p.add_argument("--flag", action="store_true")
    p.add_argument("--files", nargs="+")
    try:
        p.parse_args(argv)
    except SystemExit as exc:
        out = capsys.readouterr()
        assert exc.code == 2 and out.out == ""
        lines = out.err.splitlines()
        assert lines and lines[0].startswith("error: ") and "usage:" not in out.err
        assert all(line.startswith("  ") for line in lines[1:]), out.err
        assert "prog --help" in out.err or "choose one of" in out.err or "in full" in out.err
