"""Grading support (not a student file): ``import stu_upload`` from another folder.

``install(pkg_dir)`` puts a ``stu_upload`` package whose only search location is
``pkg_dir`` into ``sys.modules``, so ``import stu_upload.layer_1`` reads the student's file and
never falls back to the reference, and no other package (``labkit``, ``tests``) is shadowed by
copies in the student's folder.

The grading plugin puts this folder on ``PYTHONPATH`` and sets ``LABKIT_STU_DIR``: as the
``sitecustomize`` module, this file then installs the student's package in every child
Python process too (the tests run the ``main_exp_*.py`` drivers as subprocesses). Any other
``sitecustomize`` further down the path still runs.
"""
import importlib.machinery
import importlib.util
import os
import sys

PACKAGE = "stu_upload"


def install(pkg_dir):
    """Make ``stu_upload`` the package in ``pkg_dir``; returns the error text of its
    ``__init__.py`` (None when it ran, or there is none)."""
    pkg_dir = os.path.abspath(pkg_dir)
    for name in list(sys.modules):
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            del sys.modules[name]
    importlib.invalidate_caches()
    init = os.path.join(pkg_dir, "__init__.py")
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location(PACKAGE, init,
                                                      submodule_search_locations=[pkg_dir])
    else:
        spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [pkg_dir]
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    if spec.loader is not None:
        try:
            spec.loader.exec_module(module)
        except Exception as exc:        # a broken __init__.py: its submodules may still work
            return f"{type(exc).__name__}: {exc}"
    return None


def _chain():
    """Run the next ``sitecustomize`` on the path, if there is one.

    This module is being imported as ``sitecustomize`` while it runs; the import system
    (CPython 3.11 and later) looks it up in ``sys.modules`` again when its code finishes,
    so the entry must be put back, or site.py prints "Error in sitecustomize; KeyError:
    'sitecustomize'" in every process (seen with a pyenv-built 3.11 virtualenv, which has
    no other sitecustomize)."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    this = sys.modules.get("sitecustomize")
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if this is not None:
            sys.modules["sitecustomize"] = this


if __name__ == "sitecustomize":
    if os.environ.get("LABKIT_STU_DIR"):
        install(os.environ["LABKIT_STU_DIR"])
    _chain()
