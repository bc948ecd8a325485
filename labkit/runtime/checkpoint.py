"""Checkpoints of a style-transfer run, for exact resume (not a student file).

``<run id>_checkpoint.npz`` (NumPy's npz, no pickles) holds:

* ``image``: the network image after ``step`` steps, (1, 3, H, W) in the run's dtype;
* ``adam_mt``, ``adam_vt``, ``adam_step``: Adam's moments and step count for that image
  (absent for L-BFGS, whose history is not saved: it restarts from the image);
* ``step``: steps done in the whole run (all scales);
* ``settings``: the run's settings as JSON (the driver's arguments, the run id);
* ``rng_state``: the NumPy generator's state as JSON (PCG64), after the start image.

It is written to a temporary name and renamed, so a checkpoint on disk is always whole.
``load_checkpoint`` validates all of it before anything is used (CheckpointError).
"""
import json
import math
import os

import numpy as np

from labkit.runtime.cli import atomic_path, input_problem

SUFFIX = "_checkpoint.npz"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be found or read, or whose content is not a whole, valid
    checkpoint of this kit; the message says what is wrong and what to pass instead."""


def save_checkpoint(path, image, step, settings, rng_state=None, optimizer_state=None):
    arrays = {"version": np.array(VERSION), "image": np.asarray(image),
              "step": np.array(int(step)), "settings": np.array(json.dumps(settings)),
              "rng_state": np.array(json.dumps(rng_state))}
    if optimizer_state is not None:
        arrays.update(adam_mt=np.asarray(optimizer_state["mt"]),
                      adam_vt=np.asarray(optimizer_state["vt"]),
                      adam_step=np.array(int(optimizer_state["step"])))
    with atomic_path(path, flag="checkpoint") as tmp:
        with open(tmp, "wb") as f:                  # a file object: np.savez adds no suffix
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    return path


REQUIRED = ("version", "image", "step", "settings", "rng_state")
# settings a run cannot do without (the others fall back to the parser's defaults)
REQUIRED_SETTINGS = ("run_id", "content", "style", "weights", "steps", "optimizer", "dtype")


def load_checkpoint(path, parser=None):
    """-> dict(image, step, settings, rng_state, optimizer_state or None), validated
    completely before anything is used: the file (missing, unreadable, empty, not an .npz),
    the version, every field's type, shape and finiteness, Adam's moments against the
    image, the random generator's kind, and (with ``parser``, the driver's argparse) every
    setting's type against its option. Any problem is one :class:`CheckpointError`."""
    path = os.fspath(path)
    how = (f"Pass another run's OUTPUT_DIR/RUN_ID or its {SUFFIX} file, or start a new run "
           f"without --resume.")

    def bad(what):
        return CheckpointError(f"--resume: checkpoint {path} {what}. {how}")

    problem = input_problem(path)
    if problem:
        raise bad(problem)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:        # not a zip, truncated, damaged
        raise bad(f"cannot be read as a checkpoint ({type(exc).__name__}: "
                  f"{' '.join(str(exc).split())[:120]}); it is truncated, damaged or not a "
                  f"checkpoint") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise bad("is a single .npy array, not a checkpoint (.npz)")
    try:
        with data:
            missing = [k for k in REQUIRED if k not in data.files]
            if missing:
                raise bad(f"lacks {', '.join(missing)}: not a checkpoint of this kit")
            fields = {k: data[k] for k in data.files}
    except CheckpointError:
        raise
    except Exception as exc:        # a damaged member of the archive
        raise bad(f"is damaged ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") \
            from None
    ckpt = _validate(fields, bad)
    if parser is not None:
        ckpt["settings"] = check_settings(ckpt["settings"], parser, bad)
    return ckpt


def _scalar(fields, key, bad, kind="i"):
    value = fields[key]
    if value.shape != () or value.dtype.kind not in (kind if kind != "i" else "iu"):
        raise bad(f"has a damaged '{key}' (expected one {'whole number' if kind == 'i' else 'text'}"
                  f", found {value.dtype} of shape {value.shape})")
    return value.item()


def _json(fields, key, bad):
    text = _scalar(fields, key, bad, kind="U")
    try:
        return json.loads(text)
    except ValueError:
        raise bad(f"has damaged '{key}' (not JSON)") from None


def _float_array(fields, key, bad, shape=None):
    value = fields[key]
    if value.dtype.kind != "f" or value.dtype.itemsize not in (4, 8):
        raise bad(f"has '{key}' of type {value.dtype}, not float32/float64")
    if shape is not None and value.shape != shape:
        raise bad(f"has '{key}' of shape {value.shape}, not the image's {shape}")
    if not np.all(np.isfinite(value)):
        raise bad(f"has NaN or infinite values in '{key}' (the run had diverged)")
    return value


def _validate(fields, bad):
    version = _scalar(fields, "version", bad)
    if version != VERSION:
        raise bad(f"has version {version}; this kit reads version {VERSION}")
    image = _float_array(fields, "image", bad)
    if image.ndim != 4 or image.shape[:2] != (1, 3) or min(image.shape[2:]) < 1:
        raise bad(f"has an image of shape {image.shape}, not (1, 3, H, W)")
    step = _scalar(fields, "step", bad)
    if step < 0:
        raise bad(f"has a negative step count ({step})")
    settings = _json(fields, "settings", bad)
    if not isinstance(settings, dict):
        raise bad("has settings that are not a table of options")
    rng_state = _json(fields, "rng_state", bad)
    if rng_state is not None:
        kind = (rng_state.get("bit_generator") if isinstance(rng_state, dict) else
                type(rng_state).__name__)
        try:
            if kind != "PCG64":
                raise ValueError(kind)
            np.random.default_rng(0).bit_generator.state = rng_state
        except Exception:
            raise bad(f"holds the state of another random generator ({str(kind)[:40]}), "
                      f"not NumPy's PCG64") from None
    adam = [k for k in ("adam_mt", "adam_vt", "adam_step") if k in fields]
    optimizer_state = None
    if adam:
        if len(adam) != 3:
            raise bad(f"has only part of Adam's state ({', '.join(adam)})")
        mt = _float_array(fields, "adam_mt", bad, image.shape)
        vt = _float_array(fields, "adam_vt", bad, image.shape)
        if np.any(vt < 0):
            raise bad("has negative values in Adam's second moment 'adam_vt'")
        adam_step = _scalar(fields, "adam_step", bad)
        if adam_step < 0:
            raise bad(f"has a negative Adam step count ({adam_step})")
        optimizer_state = {"mt": mt, "vt": vt, "step": int(adam_step)}
    return {"image": image, "step": int(step), "settings": settings, "rng_state": rng_state,
            "optimizer_state": optimizer_state}


def check_settings(settings, parser, bad):
    """The settings a run needs are there (with a run id that is a plain file-name part),
    and every saved setting that is an option of ``parser`` has the type that option takes
    (a whole number for ``type=int``, one of the choices, a list for ``nargs='+'``...);
    settings the parser does not know are dropped (the run id is kept)."""
    missing = [k for k in REQUIRED_SETTINGS if k not in settings]
    if missing:
        raise bad(f"lacks the setting(s) {', '.join(missing)}")
    run_id = settings["run_id"]
    if (not isinstance(run_id, str) or not run_id or run_id in (".", "..")
            or os.sep in run_id or "\0" in run_id):
        raise bad(f"has an invalid run id {run_id!r}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help",)}
    out = {"run_id": settings["run_id"]}
    for key, value in settings.items():
        action = actions.get(key)
        if action is None:
            continue
        problem = _setting_problem(action, value)
        if problem:
            flag = action.option_strings[-1] if action.option_strings else key
            raise bad(f"has a setting {flag} = {json.dumps(value)[:60]} that {problem}")
        out[key] = value
    return out


def _setting_problem(action, value):
    if action.nargs == 0:                       # store_true / store_false
        return None if isinstance(value, bool) else "is not true/false"
    if value is None:
        return None if action.default is None else "is missing"
    many = action.nargs in ("+", "*")
    values = value if many else [value]
    if many and (not isinstance(value, list) or (action.nargs == "+" and not value)):
        return "is not a list of values"
    for v in values:
        if action.type is int and (not isinstance(v, int) or isinstance(v, bool)):
            return "is not a whole number"
        if action.type is float and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                     or not math.isfinite(v)):
            return "is not a finite number"
        if action.type in (None, str) and not isinstance(v, str):
            return "is not text"
        if action.choices is not None and v not in action.choices:
            return f"is not one of {', '.join(map(str, action.choices))}"
    return None


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
        if os.path.lexists(path) and not os.path.isdir(path) and path.endswith(SUFFIX):
            return path         # load_checkpoint says what is wrong with a bad one
    raise CheckpointError(f"--resume {target}: no checkpoint found (looked for "
                          f"{target + SUFFIX}). Pass OUTPUT_DIR/RUN_ID of a run (the part of "
                          f"its file names before '_final.jpg') or its {SUFFIX} file.")
