"""Read and write the pool5 dumps of exp 3.1 (``--dump-pool5`` / ``--check-pool5``).

A dump is one ``.npy`` array (1, C5, 7, 7) of floats. :func:`read_pool5` turns every
malformed file (missing, a folder, an image, a truncated or garbled ``.npy``, an ``.npz``,
pickled objects, strings, NaN) into a :class:`Pool5FileError` naming the file;
:func:`write_pool5` writes exactly the path it is given (``np.save`` would append ``.npy``),
atomically.
"""
import os

import numpy as np

from labkit.runtime.cli import UserError, atomic_output, input_problem


class Pool5FileError(UserError):
    """The pool5 reference file is missing or not a readable float array."""


def read_pool5(path, flag="--check-pool5"):
    """``path`` -> float64 array as stored; raise Pool5FileError with what to do."""
    path = os.fspath(path)
    how = "make one with: python main_exp_3_1.py --image IMAGE --dump-pool5 OUT.npy"
    if not os.path.lexists(path):
        raise Pool5FileError(f"{flag}: pool5 reference not found: {path} (looked for "
                             f"{os.path.abspath(path)}); {how}.")
    if os.path.isdir(path):
        raise Pool5FileError(f"{flag}: {path} is a folder; pass the .npy file; {how}.")
    problem = input_problem(path)
    if problem:
        raise Pool5FileError(f"{flag}: pool5 reference {path} {problem}; {how}.")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and magic[:2] != b"PK":
        raise Pool5FileError(f"{flag}: {path} is not a .npy file (it does not start with "
                             f"NumPy's header; an image or a text file?); {how}.")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:    # not a NumPy file (an image, text), or a damaged one
        text = " ".join(str(exc).split())[:160]
        raise Pool5FileError(f"{flag}: cannot read {path} as a .npy array ({type(exc).__name__}: "
                             f"{text}); it is not a pool5 dump, or it is truncated; "
                             f"{how}.") from None
    if not isinstance(data, np.ndarray):
        data.close()
        raise Pool5FileError(f"{flag}: {path} is an .npz archive, not a single .npy array; "
                             f"{how}.")
    if data.dtype.kind not in "iuf":
        raise Pool5FileError(f"{flag}: {path} holds {data.dtype} values, not numbers; {how}.")
    data = data.astype(np.float64)
    if not np.all(np.isfinite(data)):
        raise Pool5FileError(f"{flag}: {path} contains NaN or infinite values; make a new "
                             f"dump; {how}.")
    return data


def write_pool5(path, array, flag="--dump-pool5"):
    """Save ``array`` to exactly ``path`` as .npy, atomically; returns ``path``."""
    with atomic_output(path, flag) as tmp:
        with open(tmp, "wb") as f:      # a file object: np.save adds no suffix
            np.save(f, np.asarray(array), allow_pickle=False)
    return os.fspath(path)
