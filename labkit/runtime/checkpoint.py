"""Checkpoints of a style-transfer run, for exact resume (not a student file).

``<run id>_checkpoint.npz`` (NumPy's npz, no pickles) holds:

* ``image``: the network image after ``step`` steps, (1, 3, H, W) in the run's dtype;
* ``adam_mt``, ``adam_vt``, ``adam_step``: Adam's moments and step count for that image
  (absent for L-BFGS, whose history is not saved: it restarts from the image);
* ``step``: steps done in the whole run (all scales);
* ``settings``: the run's settings as JSON (the driver's arguments, the run id);
* ``rng_state``: the NumPy generator's state as JSON (PCG64), after the start image.

It is written to a temporary name and renamed, so a checkpoint on disk is always whole.
"""
import json
import os

import numpy as np

from labkit.runtime.cli import atomic_path

SUFFIX = "_checkpoint.npz"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be found or read; the message says what to pass instead."""


def save_checkpoint(path, image, step, settings, rng_state=None, optimizer_state=None):
    arrays = {"version": np.array(VERSION), "image": np.asarray(image),
              "step": np.array(int(step)), "settings": np.array(json.dumps(settings)),
              "rng_state": np.array(json.dumps(rng_state))}
    if optimizer_state is not None:
        arrays.update(adam_mt=np.asarray(optimizer_state["mt"]),
                      adam_vt=np.asarray(optimizer_state["vt"]),
                      adam_step=np.array(int(optimizer_state["step"])))
    with atomic_path(path, mode=0o666) as tmp:      # the permissions open() would give
        with open(tmp, "wb") as f:                  # a file object: np.savez adds no suffix
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    return path


def load_checkpoint(path):
    """-> dict(image, step, settings, rng_state, optimizer_state or None)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ckpt = {"image": data["image"], "step": int(data["step"]),
                    "settings": json.loads(str(data["settings"])),
                    "rng_state": json.loads(str(data["rng_state"])),
                    "optimizer_state": None}
            if "adam_mt" in data:
                ckpt["optimizer_state"] = {"mt": data["adam_mt"], "vt": data["adam_vt"],
                                           "step": int(data["adam_step"])}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc}. Pass another run's "
                              f"OUTPUT_DIR/RUN_ID or its {SUFFIX} file.") from None
    return ckpt


def resolve(target):
    """``--resume`` argument -> checkpoint path: the file itself, or OUTPUT_DIR/RUN_ID (the
    run's ``<run id>_checkpoint.npz``), or any file of the run (``..._final.jpg``)."""
    target = os.fspath(target)
    candidates = [target, target + SUFFIX]
    folder, name = os.path.split(target)
    for marker in ("_final", "_step", "_interrupted", "_lastgood", "_log", "_loss", "_sheet"):
        if marker in name:
            candidates.append(os.path.join(folder, name[:name.rindex(marker)] + SUFFIX))
    for path in candidates:
        if os.path.isfile(path) and path.endswith(SUFFIX):
            return path
    raise CheckpointError(f"--resume {target}: no checkpoint found (looked for "
                          f"{target + SUFFIX}). Pass OUTPUT_DIR/RUN_ID of a run (the part of "
                          f"its file names before '_final.jpg') or its {SUFFIX} file.")
