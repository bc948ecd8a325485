"""Numerical gradient checking (float64, central differences) with teaching messages.

A layer's backward computes a vector-Jacobian product: given an upstream gradient ``dy``,
``dx = J^T dy``. We check it against the central difference of the scalar
``L(x) = sum(f(x) * dy)``:  dL/dx[i] ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps).
The relative error is ``max|a - n| / max(max|a|, max|n|)`` (a = analytic, n = numeric).
"""
import numpy as np

DEFAULT_EPS = 1e-6
DEFAULT_THRESHOLD = 1e-7   # float64 central differences reach ~1e-9 on smooth layers


class GradientCheckError(AssertionError):
    """A gradient check failed; the message says which tensor, how wrong and where."""


def numeric_gradient(loss, array, eps=DEFAULT_EPS):
    """Central-difference gradient of the scalar ``loss()`` w.r.t. ``array`` (changed in
    place and restored). ``array`` must be float64."""
    if array.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 arrays, got {array.dtype}")
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = loss()
        flat[i] = old - eps
        minus = loss()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic, numeric):
    """(relative error, worst index) with the definition in the module docstring."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    diff = np.abs(analytic - numeric)
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), 1e-300)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    return float(diff.max(initial=0.0) / scale), tuple(int(i) for i in worst)


def assert_close(name, analytic, numeric, threshold=DEFAULT_THRESHOLD, context="", equation=""):
    """Raise GradientCheckError unless the relative error is below ``threshold``; the
    message names the quantity (and its ``equation``), the worst index, yours vs expected."""
    if equation:
        name = f"{name} ({equation})"
    analytic = np.asarray(analytic)
    numeric = np.asarray(numeric)
    if analytic.shape != numeric.shape:
        raise GradientCheckError(f"{context}{name}: shape {analytic.shape}, expected "
                                 f"{numeric.shape}")
    err, worst = relative_error(analytic, numeric)
    if not err < threshold:      # also catches NaN
        raise GradientCheckError(
            f"{context}{name}: relative error {err:.3e} >= threshold {threshold:.0e}; worst "
            f"index {worst}: yours {float(analytic[worst]):.6g}, expected "
            f"{float(numeric[worst]):.6g}")
    return err


def _same_shape(name, value, shape, context, where):
    """A probe's forward output has the upstream gradient's shape (checked before any
    arithmetic: broadcast, a wrong shape could make an array of any size)."""
    if np.shape(value) != tuple(shape):
        raise GradientCheckError(
            f"{context}{name}: at {where} your forward returned shape {np.shape(value)}, "
            f"expected {tuple(shape)} (the shape of its output at x, as dL/dY has)")


def _fresh(x):
    """A new float64 array with ``x``'s values (never a view): a probe a forward cannot tell
    from a real input by identity or by memory it shares with an earlier one."""
    return np.array(x, dtype=np.float64, copy=True)


def _refuse_both_zero(name, analytic, numeric, context):
    if not np.any(analytic) and not np.any(numeric):
        raise GradientCheckError(
            f"{context}{name}: the gradient and its numerical estimate are both exactly zero; "
            f"a check that a flat forward (one that answers the probe points from a cache) "
            f"and an empty backward would pass proves nothing, so it fails")


def _check_probe(name, value, reference, z, threshold, context, where):
    expected = np.asarray(reference(_fresh(z)), dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    if value.shape != expected.shape:
        raise GradientCheckError(f"{context}{name}: forward at {where} has shape "
                                 f"{value.shape}, expected {expected.shape}")
    err, worst = relative_error(value, expected)
    if not err < threshold:
        raise GradientCheckError(
            f"{context}{name}: the forward at {where} is not the function being "
            f"differentiated (relative error {err:.3e} >= {threshold:.0e} against the "
            f"reference; worst index {worst}): a forward must compute every input, not answer "
            f"from earlier ones")
    return expected


def check_vjp(name, forward, backward, x, dy=None, seed=0, threshold=DEFAULT_THRESHOLD,
              context="", reference=None, forward_threshold=1e-10, equation=""):
    """Check ``backward(dy)`` against central differences of ``sum(forward(x) * dy)``.

    ``forward(x)`` must be a pure function of ``x`` (it may use a layer); ``backward(dy)``
    returns the analytic gradient w.r.t. ``x`` (called once, after a forward on ``x``).
    A random upstream gradient is drawn when ``dy`` is None. Returns the relative error.

    Probes the forward cannot tell from real inputs: every evaluation gets a fresh array
    (never ``x`` changed in place). With ``reference`` (a function ``z -> expected
    forward(z)``, staff-side), the forward is compared with it at ``x`` and at every probe
    point, and its finite differences with the reference's, before the gradient is
    credited: a forward that answers probes from a cache of recent inputs fails. Without
    one, a check whose analytic and numerical gradients are both exactly zero fails (a
    flat cached forward plus an empty backward would otherwise pass).
    """
    x = np.asarray(x)
    if x.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 arrays, got {x.dtype}")
    y = forward(_fresh(x))
    if reference is not None:
        _check_probe(name, y, reference, x, forward_threshold, context, "x")
    if dy is None:
        dy = np.random.default_rng(seed).standard_normal(np.shape(y))
    analytic = np.array(backward(dy), dtype=np.float64)
    numeric = np.zeros(x.shape)
    expected = np.zeros(x.shape) if reference is not None else None
    flat = x.reshape(-1)
    for i in range(flat.size):
        sides = []
        for sign in (1, -1):
            z = _fresh(x)
            z.reshape(-1)[i] = flat[i] + sign * DEFAULT_EPS
            value = forward(_fresh(z))
            _same_shape(name, value, np.shape(dy), context, f"probe {i}")
            sides.append(float(np.sum(np.asarray(value, dtype=np.float64) * dy)))
            if reference is not None:
                ref = _check_probe(name, value, reference, z, forward_threshold, context,
                                   f"probe {i} ({'+' if sign > 0 else '-'}eps)")
                sides.append(float(np.sum(ref * dy)))
        if reference is not None:
            numeric.flat[i] = (sides[0] - sides[2]) / (2 * DEFAULT_EPS)
            expected.flat[i] = (sides[1] - sides[3]) / (2 * DEFAULT_EPS)
        else:
            numeric.flat[i] = (sides[0] - sides[1]) / (2 * DEFAULT_EPS)
    if reference is not None:
        assert_close(f"{name} (your forward's finite differences)", numeric, expected,
                     threshold, context)
    if equation:
        name = f"{name} ({equation})"
    _refuse_both_zero(name, analytic, numeric, context)
    return assert_close(name, analytic, numeric, threshold, context)


def check_directional(name, forward, gradient, x, dy, directions=3, eps=1e-5, seed=0,
                      threshold=1e-5, context="", reference=None, forward_threshold=1e-10):
    """Check an analytic gradient along random directions: for ``L(z) = sum(forward(z) *
    dy)`` and each direction ``d`` (standard normal, seeded), ``(L(x + eps d) - L(x - eps d))
    / (2 eps)`` must equal ``<gradient, d>`` within ``threshold`` (relative). For networks,
    where one numeric derivative per element is too slow.

    Both points of every direction are fresh arrays; with ``reference`` the forward is
    compared with it at both points and the finite difference with the reference's, so a
    forward answering from a cache of recent inputs fails; zero on both sides fails.
    Returns the largest relative error."""
    x = np.asarray(x, dtype=np.float64)
    gradient = np.asarray(gradient, dtype=np.float64)
    if gradient.shape != x.shape:
        raise GradientCheckError(f"{context}{name}: shape {gradient.shape}, expected {x.shape}")
    rng = np.random.default_rng(seed)
    worst = 0.0
    for k in range(directions):
        d = rng.standard_normal(x.shape)
        values, refs = [], []
        for sign in (1, -1):
            z = x + sign * eps * d                 # a new array
            value = forward(z)
            _same_shape(name, value, np.shape(dy), context, f"direction {k}")
            value = np.asarray(value, dtype=np.float64)
            values.append(float(np.sum(value * dy)))
            if reference is not None:
                ref = _check_probe(name, value, reference, z, forward_threshold, context,
                                   f"x {'+' if sign > 0 else '-'} eps*d (direction {k})")
                refs.append(float(np.sum(ref * dy)))
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = float(np.sum(gradient * d))
        if reference is not None:
            expected = (refs[0] - refs[1]) / (2 * eps)
            if not abs(numeric - expected) <= threshold * abs(expected):
                raise GradientCheckError(
                    f"{context}{name}: along direction {k} your forward changes by "
                    f"{numeric:.6g} per unit step, the reference's by {expected:.6g}: the "
                    f"forward must compute every input, not answer from earlier ones")
        _refuse_both_zero(name, np.array(analytic), np.array(numeric), context)
        err = abs(numeric - analytic) / max(abs(numeric), abs(analytic))
        if not err <= threshold:
            raise GradientCheckError(
                f"{context}{name}: along direction {k}, <gradient, d> = {analytic:.6g}, "
                f"numerically {numeric:.6g} (relative error {err:.2e} > {threshold:.0e})")
        worst = max(worst, err)
    return worst
