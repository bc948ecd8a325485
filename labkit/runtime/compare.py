"""Comparisons that teach: every failed check says what was compared, by which equation, where
it is worst (yours vs expected) and against which threshold.

The tests, public and hidden, compare a student's result with the expected one through these
functions instead of bare ``assert``s or ``np.testing`` dumps, so that a failure reads::

    content loss L_content (eq. 3.10): yours 0.25 vs expected 0.125 (a scalar); error 1 >
    threshold 1e-12 (relative to max |expected| 0.125)

and the grade report, which carries a failed test's first message line, shows the same.
Check the value before its gradient: a wrong loss reported as a wrong gradient sends the
student to a correct backward.
"""
import numpy as np


class ComparisonError(AssertionError):
    """A result differs from the expected one; the message says which, where and how much."""


def _label(name, equation):
    return f"{name} ({equation})" if equation else name


def _fmt(value):
    return f"{float(value):.6g}"


def _where(index):
    return f"at index {index}" if index else "(a scalar)"


def _array(value, name, label):
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ComparisonError(f"{label}: yours is not a number or an array of numbers "
                              f"({type(value).__name__}: {exc})") from None


def expect_shape(name, yours, expected_shape, equation="", hint=""):
    """Raise unless ``np.shape(yours) == expected_shape``."""
    label = _label(name, equation)
    got = tuple(np.shape(yours))
    if got != tuple(expected_shape):
        raise ComparisonError(f"{label}: yours has shape {got}, expected "
                              f"{tuple(expected_shape)}" + (f"; {hint}" if hint else ""))


def expect_close(name, yours, expected, rtol=1e-12, atol=0.0, equation="", hint=""):
    """Raise ComparisonError unless ``max|yours - expected| <= atol + rtol * max|expected|``.

    The error is measured against the expected values' scale, so zeros of the right shape
    fail. The message names the quantity and its equation, shows yours vs expected at the
    worst index, the error and the threshold; ``hint`` (where to look) is appended.
    Returns the largest absolute difference.
    """
    label = _label(name, equation)
    expected = np.asarray(expected, dtype=np.float64)
    expect_shape(name, yours, expected.shape, equation, hint)
    mine = _array(yours, name, label)
    tail = f"; {hint}" if hint else ""
    bad = ~np.isfinite(mine)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0]) if mine.ndim else ()
        raise ComparisonError(f"{label}: yours is {mine[index]} {_where(index)}, expected "
                              f"{_fmt(expected[index])}{tail}")
    diff = np.abs(mine - expected)
    scale = float(np.abs(expected).max(initial=0.0))
    limit = atol + rtol * scale
    worst = float(diff.max(initial=0.0))
    if not worst <= limit:
        index = (tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
                 if diff.ndim else ())
        if rtol and scale:
            error, against = worst / scale, f"{rtol:.0e} (relative to max |expected| " \
                                             f"{scale:.3g})"
            if atol:
                against = f"{limit:.3g} (absolute: {atol:.0e} + {rtol:.0e} x max |expected| " \
                          f"{scale:.3g})"
                error = worst
        else:
            error, against = worst, f"{limit:.3g} (absolute)"
        raise ComparisonError(f"{label}: yours {_fmt(mine[index])} vs expected "
                              f"{_fmt(expected[index])} {_where(index)}; error {error:.3g} > "
                              f"threshold {against}{tail}")
    return worst


def expect_equal(name, yours, expected, equation="", hint=""):
    """Exact equality (pooling picks values, img2col copies them): the first differing
    index, yours vs expected there, and how many entries differ."""
    label = _label(name, equation)
    expected = np.asarray(expected)
    expect_shape(name, yours, expected.shape, equation, hint)
    mine = _array(yours, name, label)
    differ = ~((mine == expected) | (np.isnan(mine) & np.isnan(expected.astype(np.float64))))
    if differ.any():
        index = tuple(int(i) for i in np.argwhere(differ)[0]) if mine.ndim else ()
        raise ComparisonError(f"{label}: yours {_fmt(mine[index])} vs expected "
                              f"{_fmt(expected[index])} {_where(index)} (the first of "
                              f"{int(differ.sum())} of {differ.size} entries that differ; "
                              f"they must be equal)" + (f"; {hint}" if hint else ""))


def expect(condition, message):
    """``assert condition, message`` that survives ``python -O`` and names its failure."""
    if not condition:
        raise ComparisonError(message)
