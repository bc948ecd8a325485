"""Small helpers shared by the layer files (not a student file).

``need`` reads what a layer keeps between ``forward`` and ``backward`` and raises a teaching
error when ``backward`` runs first; the others check what a user passes to a layer
(constructor sizes, input dtype, the shape of ``top_diff``, labels) with a message that
names the layer, what was given and what was expected.
"""
import numpy as np


class BackwardBeforeForwardError(RuntimeError):
    """Raised when a layer's backward pass is called before its forward pass."""


def need(layer, attr):
    """Return ``layer.<attr>`` set by ``forward``; raise a clear error if forward never ran."""
    value = getattr(layer, attr, None)
    if value is None:
        raise BackwardBeforeForwardError(
            f"{type(layer).__name__}.backward() was called before forward(): the cache "
            f"'{attr}' is empty. Call forward(input) first, then backward(top_diff).")
    return value


def check_param_shape(layer, what, got, expected):
    """Raise a ValueError naming the parameter, the expected and the given shape."""
    if tuple(got) != tuple(expected):
        raise ValueError(
            f"{type(layer).__name__}.load_param: {what} has shape {tuple(got)}, expected "
            f"{tuple(expected)}. Check the layer's constructor arguments and transpose the "
            f"array to the lab's layout if it comes from another framework.")


def whole_positive(layer_name, what, value, minimum=1):
    """``int(value)`` when ``value`` is a whole number >= ``minimum`` (3, 3.0, np.int64(3));
    otherwise a ValueError naming the layer and the argument (2.5 is not silently 2)."""
    try:
        number = float(value)
        whole = not isinstance(value, (bool, str)) and number.is_integer()
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or number < minimum:
        raise ValueError(f"{layer_name}: {what} must be a whole number >= {minimum}, got "
                         f"{value!r}.")
    return int(number)


def as_float(array, who="input"):
    """The layers compute in floating point: a float array is returned as it is; an integer
    or boolean one (e.g. a uint8 image straight from Pillow) is converted to float64, so
    that the weights are never cast to integers. Anything else is a TypeError."""
    array = np.asarray(array)
    if array.dtype.kind in "biu":
        return array.astype(np.float64)
    if array.dtype.kind != "f":
        raise TypeError(f"{who} has dtype {array.dtype}; pass a float (or integer) array.")
    return array


def check_top_diff(layer, top_diff, expected_shape):
    """``top_diff`` as a float array, after checking it has the shape forward() returned."""
    if tuple(np.shape(top_diff)) != tuple(expected_shape):
        raise ValueError(
            f"{type(layer).__name__}.backward: top_diff has shape {tuple(np.shape(top_diff))}, "
            f"expected {tuple(expected_shape)} (the shape of forward()'s output): pass the "
            f"gradient of the loss with respect to this layer's output.")
    return as_float(top_diff, f"{type(layer).__name__}.backward: top_diff")


def check_labels(layer, label, batch, classes):
    """Labels (N,) as int64 after checking: one per row, whole numbers in [0, classes)."""
    who = f"{type(layer).__name__}.get_loss"
    label = np.asarray(label).reshape(-1)
    if label.shape[0] != batch:
        raise ValueError(f"{who}: {label.shape[0]} labels for a batch of {batch}; pass one "
                         f"class index per row.")
    if label.dtype.kind not in "iuf" or (label.dtype.kind == "f"
                                         and not np.all(np.mod(label, 1) == 0)):
        raise ValueError(f"{who}: labels must be whole class indices, got {label[:5]} "
                         f"(dtype {label.dtype}).")
    if label.size and (label.min() < 0 or label.max() >= classes):
        bad = label[(label < 0) | (label >= classes)][0]
        raise ValueError(f"{who}: label {bad} is not a class index in [0, {classes - 1}] "
                         f"({classes} classes).")
    return label.astype(np.int64)
