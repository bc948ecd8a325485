"""The student's modules, found by either naming, at attribute-access time.

Tests, drivers and the grader reach student code only through ``stu``::

    from labkit.runtime.student import stu
    layer = stu.layer_1.FullyConnectedLayer(4, 3)      # layer_1.py or layers_1.py

Each logical module has our name and the original kit's name:

=================  =============================================
logical name       files tried, in order
=================  =============================================
``layer_1``        ``layer_1.py``, ``layers_1.py``
``layer_2``        ``layer_2.py``, ``layers_2.py``
``layer_3``        ``layer_3.py``, ``layers_3.py``
``vgg_cpu``        ``vgg_cpu.py``
``vgg19_demo``     ``vgg19_demo.py``
``style_transfer`` ``style_transfer.py``, ``exp_3_3_style_transfer.py``
=================  =============================================

A file that is only an alias of the other name (this kit's alias file, byte for byte: it says
``labkit: alias of``; ``ALIAS_SHA256``) is skipped,
so a folder with our files and the alias files resolves to our files, and a folder where a
student dropped the original ``layers_1.py`` over the alias resolves to the student's file.
The original kit keeps ``AdamOptimizer`` and ``get_random_img`` in the style-transfer file:
``stu.layer_3.AdamOptimizer`` falls back to it (and ``stu.style_transfer.AdamOptimizer`` to
``layer_3``). A module is imported only when one of its attributes is read, so a student's
SyntaxError in one file costs only the tests that touch that file.
"""
import contextlib
import importlib
import os
import pathlib
import sys

PACKAGE = "stu_upload"
ALIAS_MARK = "labkit: alias of"
# the sha256 of this kit's own alias files (stu_upload/layers_1.py ...): only a byte-identical
# copy counts as an alias (anything else carrying the mark is the student's file, submitted).
# tests_staff/test_student_resolver.py says when the alias files change and this must follow.
ALIAS_SHA256 = frozenset({
    "3221c487478de02becb9fc795f6c5bbc26dcfb03434b10bb521e59dcc656b85e",    # layers_1.py
    "76f3888db0f7f39452943333039efeed1b678b3c1958688684c2d07c4935d030",    # layers_2.py
    "c363f5c9abffde1a4a23eb424c5f923ed30fcaf5692dd0d056de14e83e209365",    # layers_3.py
    "63ff4e0453f5eefffec63b9b6db3e4e6c3d39d312bbc266a44c0c00f7f41378b",    # exp_3_3_style_transfer.py
})

NAMES = {
    "layer_1": ("layer_1", "layers_1"),
    "layer_2": ("layer_2", "layers_2"),
    "layer_3": ("layer_3", "layers_3"),
    "vgg_cpu": ("vgg_cpu",),
    "vgg19_demo": ("vgg19_demo",),
    "style_transfer": ("style_transfer", "exp_3_3_style_transfer"),
    "_base": ("_base",),              # this kit's helpers (BackwardBeforeForwardError)
}
# attributes that the two kits keep in different files: logical module -> other module
FALLBACK = {"layer_3": "style_transfer", "style_transfer": "layer_3"}

# the logical modules that say an experiment was submitted
EXPERIMENTS = {
    "3.1": ("layer_1", "layer_2", "vgg_cpu"),
    "3.2": ("vgg19_demo",),
    "3.3": ("layer_3", "style_transfer"),
}


class StudentModuleMissing(ImportError):
    """No file of a logical student module is in the stu_upload folder."""


_FOLDER = {"path": None, "seed_hook": None, "export_hook": None, "folder_hook": None}


def use_package_dir(folder):
    """Where the student's files are, for a process that does not import them itself (the
    sandboxed grader: ``import stu_upload.x`` gives proxies to a worker, and the proxy
    package has no folder); only file names are read there."""
    _FOLDER["path"] = os.path.abspath(folder) if folder else None


def use_seed_hook(hook):
    """``hook(seed)`` seeds NumPy's global generator where the student's code runs (the
    sandboxed grader's worker); None: it runs in this process."""
    _FOLDER["seed_hook"] = hook


def seed_numpy(seed):
    """``np.random.seed(seed)`` for the student's code: here, and in the sandboxed worker
    when the grader runs the student's code there."""
    import numpy as np
    np.random.seed(seed)
    if _FOLDER["seed_hook"] is not None:
        _FOLDER["seed_hook"](seed)


def use_export_hook(hook):
    """``hook(obj, methods)`` hands a test's object to student code that runs elsewhere (the
    sandboxed grader's worker); None: student code runs in this process."""
    _FOLDER["export_hook"] = hook


def to_student(obj, methods=("forward", "backward")):
    """``obj`` as student code can receive it: ``obj`` itself when the student's code runs in
    this process; graded in the sandbox, a stand-in whose ``methods`` (``"__call__"``: the
    object itself) run here when student code calls them. For a test's own layers and
    functions put into the student's objects (``vgg.layers = {...}``)."""
    if _FOLDER["export_hook"] is None:
        return obj
    return _FOLDER["export_hook"](obj, methods)


def use_folder_hook(hook):
    """``hook(folder, give)`` lets student code that runs elsewhere (the sandboxed grader's
    worker, another user) write in a test's ``folder`` (``give`` True) or ends that (False);
    None: student code runs in this process, with the test's rights."""
    _FOLDER["folder_hook"] = hook


@contextlib.contextmanager
def student_folder(folder):
    """``with student_folder(tmp_path / "out") as out: vgg.save_image(..., out / "x.png")``:
    the folder (made if missing) where the student's code may write while the block runs.
    Graded in the sandbox only such folders are the student's; when the block ends the
    grader takes the folder back (a link the student's code left there is removed) before
    the test reads it. Elsewhere it is just the folder."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hook = _FOLDER["folder_hook"]
    if hook is not None:
        hook(str(folder), True)
    try:
        yield folder
    finally:
        if hook is not None:
            hook(str(folder), False)


def runs_here():
    """True when the student's code runs in this process (False: in the sandboxed grader's
    worker, where arrays come back as copies: identity and views cannot be seen)."""
    return _FOLDER["export_hook"] is None


def package_dir():
    """The folder of the student's ``stu_upload``: the one given to ``use_package_dir``,
    ``$LABKIT_STU_DIR`` (the in-process grader sets it), else the folder of the
    ``stu_upload`` package in use. Only file names are read there; no code runs."""
    if _FOLDER["path"]:
        return _FOLDER["path"]
    folder = os.environ.get("LABKIT_STU_DIR")
    if folder and os.path.isdir(folder):
        return os.path.abspath(folder)
    pkg = sys.modules.get(PACKAGE) or importlib.import_module(PACKAGE)
    paths = list(getattr(pkg, "__path__", None) or [])
    if not paths:
        raise StudentModuleMissing(f"cannot tell where {PACKAGE} lives: set LABKIT_STU_DIR to "
                                   f"its folder")
    return os.path.abspath(paths[0])


def _is_alias(path):
    """Whether ``path`` is one of this kit's alias files, byte for byte (ALIAS_SHA256)."""
    import hashlib
    try:
        with open(path, "rb") as f:
            data = f.read(8193)
    except OSError:
        return False
    return len(data) <= 8192 and ALIAS_MARK.encode() in data and \
        hashlib.sha256(data).hexdigest() in ALIAS_SHA256


def module_file(logical, folder=None):
    """The file name (e.g. ``layers_1``) that holds ``logical`` in ``folder``, or None."""
    folder = folder or package_dir()
    found = [n for n in NAMES[logical] if os.path.isfile(os.path.join(folder, n + ".py"))]
    real = [n for n in found if not _is_alias(os.path.join(folder, n + ".py"))]
    return (real or found or [None])[0]


def present(logical, folder=None):
    """Whether the student's folder has a (non-alias) file for ``logical``."""
    folder = folder or package_dir()
    name = module_file(logical, folder)
    return name is not None and not _is_alias(os.path.join(folder, name + ".py"))


def experiments_present(folder=None):
    """{'3.1': bool, '3.2': bool, '3.3': bool}: which experiments' files were submitted."""
    return {exp: any(present(m, folder) for m in mods) for exp, mods in EXPERIMENTS.items()}


def load(logical):
    """Import and return the student's module for ``logical``."""
    if logical not in NAMES:
        raise AttributeError(f"no student module {logical!r}; known: {', '.join(NAMES)}")
    name = module_file(logical)
    if name is None:
        raise StudentModuleMissing(
            f"{PACKAGE} has no {' or '.join(n + '.py' for n in NAMES[logical])}: this "
            f"experiment's file was not submitted")
    return importlib.import_module(f"{PACKAGE}.{name}")


class _Module:
    """Lazy view of one logical module: attributes are read from the student's file."""

    def __init__(self, logical):
        self._logical = logical

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        module = load(self._logical)
        try:
            return getattr(module, attr)
        except AttributeError:
            other = FALLBACK.get(self._logical)
            if other and module_file(other) is not None:
                try:
                    return getattr(load(other), attr)
                except AttributeError:
                    pass
            raise AttributeError(f"{module.__name__} ({os.path.basename(module.__file__)}) "
                                 f"has no {attr!r}") from None

    @property
    def module(self):
        return load(self._logical)

    def __repr__(self):
        return f"<student module {self._logical}>"


def lazy(logical, *names):
    """Callables that look ``names`` up in the student's ``logical`` module when called
    (``FullyConnectedLayer(4, 3)`` in a test body), so a test module can name the student's
    classes at its top without importing student code at collection time. One name: the
    callable; several: a tuple."""
    def make(name):
        def call(*args, **kwargs):
            return getattr(_Module(logical), name)(*args, **kwargs)
        call.__name__ = call.__qualname__ = name
        call.__doc__ = f"stu.{logical}.{name}(...), resolved when called"
        return call
    made = tuple(make(n) for n in names)
    return made[0] if len(made) == 1 else made


class Student:
    """``stu.layer_1``, ``stu.layer_2``, ...: lazy views of the student's modules."""

    def __getattr__(self, logical):
        if logical in NAMES:
            return _Module(logical)
        raise AttributeError(f"no student module {logical!r}; known: {', '.join(NAMES)}")

    present = staticmethod(present)
    experiments_present = staticmethod(experiments_present)
    module_file = staticmethod(module_file)
    package_dir = staticmethod(package_dir)


stu = Student()


class StudentModules:
    """What the tests' ``stu`` fixture hands out: ``stu.layer_1`` is the student's layer_1
    module under either naming (``layer_1.py`` or the original kit's ``layers_1.py``);
    other names (``stu._base``) are the modules ``stu_upload.<name>`` (when staff grade in
    the sandbox, ``stu_upload`` is the proxy package, so these are WorkerModule proxies)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in NAMES:
            return getattr(stu, name)
        import importlib
        return importlib.import_module(f"stu_upload.{name}")
