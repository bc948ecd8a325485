"""Legacy shim: run student code written for the original lab's environment.

The original kit ran on Python 3.6-3.7, NumPy 1.16-1.19 and SciPy 1.2; student code of that
time uses ``np.float``, ``np.int``, ``np.bool``, ``np.object`` (removed in NumPy 1.24) and
``scipy.misc.imread / imresize / imsave`` (removed in SciPy 1.2-1.3). ``install()`` puts
them back:

* ``np.float``, ``np.int``, ``np.object``, ``np.complex``, ``np.str`` are the builtins again
  (what they always were); ``np.bool`` is NumPy 2's own ``np.bool`` (a valid dtype, as the
  builtin was); ``np.float_`` / ``np.complex_`` / ``np.unicode_`` NumPy's types;
* ``scipy.misc.imread(path, flatten=False, mode=None)`` -> uint8 array (H, W, 3) for RGB
  (float32 grey with ``flatten``); ``scipy.misc.imresize(arr, size, interp='bilinear')`` ->
  uint8 array, ``size`` a (h, w) tuple, an int percentage or a float fraction;
  ``scipy.misc.imsave(path, arr)``: all through Pillow, with SciPy 1.2's value ranges
  (non-uint8 arrays are byte-scaled from their min..max to 0..255, as ``bytescale`` did).

Both are installed lazily (when NumPy or ``scipy.misc`` is first imported), so installing
the shim costs nothing at start-up. The drivers and the grader install it before student
code is imported; the kit root's ``sitecustomize.py`` installs it for any Python started
with ``PYTHONPATH`` at the kit root (the original drivers). Turn it off with the
environment variable ``LABKIT_LEGACY=0`` (or a driver's ``--no-legacy``).
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

ENV = "LABKIT_LEGACY"
_installed = False


def enabled():
    """False when ``LABKIT_LEGACY`` is 0/no/off/false."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "no", "off", "false")


# ------------------------------------------------------------------------------ numpy
def patch_numpy(np):
    """Put the removed aliases back on the numpy module."""
    aliases = {"float": float, "int": int, "bool": bool, "object": object, "complex": complex,
               "str": str, "long": int, "unicode": str,
               "float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}
    for name, value in aliases.items():
        if name not in np.__dict__:
            setattr(np, name, value)


# ------------------------------------------------------------------------------ scipy.misc
def bytescale(data, cmin=None, cmax=None, high=255, low=0):
    """SciPy 1.2's ``bytescale``: uint8 unchanged, anything else min..max -> low..high."""
    import numpy as np
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    cmin = data.min() if cmin is None else cmin
    cmax = data.max() if cmax is None else cmax
    scale = float(high - low) / ((cmax - cmin) or 1)
    out = (data.astype(np.float64) - cmin) * scale + low
    return (out.clip(low, high) + 0.5).astype(np.uint8)


def toimage(arr):
    """Array -> PIL image as SciPy 1.2's ``toimage`` did for grey (H, W) and RGB(A)."""
    import numpy as np
    from PIL import Image
    data = np.asarray(arr)
    if data.ndim == 2:
        return Image.fromarray(bytescale(data), "L")
    if data.ndim == 3 and data.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(bytescale(data)),
                               "RGB" if data.shape[2] == 3 else "RGBA")
    raise ValueError(f"scipy.misc (labkit legacy shim): cannot make an image of an array of "
                     f"shape {data.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")


def imread(name, flatten=False, mode=None):
    """SciPy 1.2's ``imread`` through Pillow: the file's pixels as an array (uint8 for RGB
    and grey files; float32 grey with ``flatten=True``)."""
    import numpy as np
    from PIL import Image
    with Image.open(name) as im:
        if flatten:
            im = im.convert("F")
        elif mode is not None:
            im = im.convert(mode)
        elif im.mode not in ("L", "RGB", "RGBA", "I", "F"):
            im = im.convert("RGB")
        return np.array(im)


def imresize(arr, size, interp="bilinear", mode=None):
    """SciPy 1.2's ``imresize``: (h, w) tuple, int percent or float fraction -> uint8."""
    import numpy as np
    from PIL import Image
    im = toimage(arr)
    if mode is not None:
        im = im.convert(mode)
    if isinstance(size, (int, np.integer)):
        new = tuple((np.array(im.size) * (size / 100.0)).astype(int))
    elif isinstance(size, (float, np.floating)):
        new = tuple((np.array(im.size) * size).astype(int))
    else:
        new = (int(size[1]), int(size[0]))
    resample = {"nearest": Image.NEAREST, "lanczos": Image.LANCZOS,
                "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "cubic": Image.BICUBIC}[interp]
    return np.array(im.resize(new, resample=resample))


def imsave(name, arr, format=None):
    """SciPy 1.2's ``imsave``: byte-scale (unless uint8) and write with Pillow."""
    toimage(arr).save(name, format=format)


def patch_scipy_misc(misc):
    for fn in (imread, imresize, imsave, bytescale, toimage):
        setattr(misc, fn.__name__, fn)


def patch_scipy(scipy):
    """``scipy.misc`` as an attribute of ``scipy`` (imported on first use), as on SciPy 1.2:
    the original kit's given vgg19_demo.py does ``import scipy.io`` and then calls
    ``scipy.misc.imread``, which only an importable ``scipy.misc`` does not satisfy."""
    if getattr(scipy, "_labkit_misc", False):
        return
    previous = scipy.__dict__.get("__getattr__")

    def __getattr__(name):      # noqa: N807 (a module's __getattr__, PEP 562)
        if name == "misc":
            import importlib
            return importlib.import_module("scipy.misc")
        if previous is not None:
            return previous(name)
        raise AttributeError(f"module 'scipy' has no attribute {name!r}")

    scipy.__getattr__ = __getattr__
    scipy._labkit_misc = True


# ------------------------------------------------------------------------------ given code
# The original kit's *given* exp 3.1 code is Python 2 (lab_interfaces.md): these output-size
# lines of its layers_2.py (conv and max-pool) divide with "/", a float under Python 3. Every
# real submission carries them unchanged; they are the course's lines, not the student's, so
# exactly these lines (compared without their indentation) are run with their intended
# integer meaning. Any other line, a student's own "/" included, runs as written.
GIVEN_PY2_LINES = {
    "height_out = (height - self.kernel_size) / self.stride + 1":
        "height_out = (height - self.kernel_size) // self.stride + 1",
    "width_out = (width - self.kernel_size) / self.stride + 1":
        "width_out = (width - self.kernel_size) // self.stride + 1",
    "height_out = (self.input.shape[2] - self.kernel_size) / self.stride + 1":
        "height_out = (self.input.shape[2] - self.kernel_size) // self.stride + 1",
    "width_out = (self.input.shape[3] - self.kernel_size) / self.stride + 1":
        "width_out = (self.input.shape[3] - self.kernel_size) // self.stride + 1",
}
# the student files' sibling modules: the original's given files import them without a dot
# ("from layers_1 import ..."), which Python 3 reads as a top-level module
SIBLINGS = ("layers_1", "layers_2", "layers_3", "vgg_cpu", "vgg19_demo",
            "exp_3_3_style_transfer", "layer_1", "layer_2", "layer_3", "style_transfer",
            "_base")
STUDENT_PACKAGE = "stu_upload"


def rewrite_given(source):
    """``source`` with the original kit's known given Python-2 lines (GIVEN_PY2_LINES) made
    Python 3 and dot-less sibling imports (``from layers_1 import X``, ``import layers_2``)
    made relative; nothing else changes (line numbers are kept)."""
    import re
    sibling = "|".join(SIBLINGS)
    from_re = re.compile(rf"^(\s*)from\s+({sibling})\s+import\b")
    import_re = re.compile(rf"^(\s*)import\s+({sibling})\s*(#.*)?$")
    out, changed = [], False
    for line in source.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        indent = body[:len(body) - len(body.lstrip())]
        new = body
        if body.strip() in GIVEN_PY2_LINES:
            new = indent + GIVEN_PY2_LINES[body.strip()]
        elif from_re.match(body):
            new = from_re.sub(lambda m: f"{m.group(1)}from .{m.group(2)} import", body, 1)
        elif import_re.match(body):
            m = import_re.match(body)
            new = f"{m.group(1)}from . import {m.group(2)}" + (f"  {m.group(3)}" if m.group(3)
                                                                 else "")
        changed |= new != body
        out.append(new + end)
    return "".join(out) if changed else source


class _GivenCodeLoader(importlib.machinery.SourceFileLoader):
    """A student module, compiled from its source after ``rewrite_given`` (never from a
    cached .pyc, and none is written: the cache must not hold rewritten code)."""

    def get_code(self, fullname):
        path = self.get_filename(fullname)
        data = self.get_data(path)
        source = importlib.util.decode_source(data)
        return compile(rewrite_given(source), path, "exec", dont_inherit=True)


# ------------------------------------------------------------------------------ hooks
HOOKS = {"numpy": patch_numpy, "scipy": patch_scipy, "scipy.misc": patch_scipy_misc}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def __getattr__(self, name):        # get_resource_reader, is_package, ...: the loader's
        return getattr(self.loader, name)

    def exec_module(self, module):
        import warnings
        with warnings.catch_warnings():     # SciPy's "scipy.misc is deprecated": the shim
            warnings.simplefilter("ignore", DeprecationWarning)     # is why it is imported
            self.loader.exec_module(module)
        self.hook(module)


class _LegacyFinder(importlib.abc.MetaPathFinder):
    """Patches numpy, scipy and scipy.misc right after they are imported; loads the student
    package's modules through ``_GivenCodeLoader``."""

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith(STUDENT_PACKAGE + ".") and fullname.count(".") == 1:
            return self._student_spec(fullname, path, target)
        hook = HOOKS.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, hook)
                return spec
        if fullname == "scipy.misc":        # a SciPy without scipy.misc at all (2.0)
            return importlib.machinery.ModuleSpec(fullname, _EmptyModuleLoader(hook))
        return None


    def _student_spec(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if type(spec.loader) is importlib.machinery.SourceFileLoader:
                    spec.loader = _GivenCodeLoader(fullname, spec.origin)
                return spec
        return None


class _EmptyModuleLoader(importlib.abc.Loader):
    def __init__(self, hook):
        self.hook = hook

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__doc__ = "scipy.misc image functions of SciPy 1.2 (labkit legacy shim)"
        self.hook(module)


def install():
    """Install the shim (once; nothing when ``LABKIT_LEGACY=0``). Returns whether it is on."""
    global _installed
    if not enabled():
        return False
    if not _installed:
        _installed = True
        sys.meta_path.insert(0, _LegacyFinder())
    for name, hook in HOOKS.items():        # already imported: patch now
        if name in sys.modules:
            hook(sys.modules[name])
    return True
