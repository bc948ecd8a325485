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


def assert_close(name, analytic, numeric, threshold=DEFAULT_THRESHOLD, context=""):
    """Raise GradientCheckError unless the relative error is below ``threshold``."""
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


def check_vjp(name, forward, backward, x, dy=None, seed=0, threshold=DEFAULT_THRESHOLD,
              context=""):
    """Check ``backward(dy)`` against central differences of ``sum(forward(x) * dy)``.

    ``forward(x)`` must be a pure function of ``x`` (it may use a layer); ``backward(dy)``
    returns the analytic gradient w.r.t. ``x`` (called once, after a forward on ``x``).
    A random upstream gradient is drawn when ``dy`` is None. Returns the relative error.
    """
    y = forward(x)
    if dy is None:
        dy = np.random.default_rng(seed).standard_normal(y.shape)
    analytic = np.array(backward(dy), dtype=np.float64)
    numeric = numeric_gradient(lambda: float(np.sum(forward(x) * dy)), x)
    return assert_close(name, analytic, numeric, threshold, context)
