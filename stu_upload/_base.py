"""Small helpers shared by the layer files (not a student file).

`Cache` documents what a layer keeps between ``forward`` and ``backward`` and raises a
teaching error when ``backward`` runs first.
"""


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
