"""Start-up hook for Python processes run with ``PYTHONPATH`` at this kit's root (not a
student file).

That is how the original lab's drivers (``main_exp_3_x.py`` in their own folders) run on this
kit: ``PYTHONPATH=/path/to/kit python main_exp_3_1.py``. Before any student code is imported
this installs the legacy shim (``labkit/runtime/legacy.py``: ``np.float`` & co. and
``scipy.misc.imread/imresize/imsave``; off with ``LABKIT_LEGACY=0``). ``import pycnml`` then
finds the kit's ``pycnml.py`` (the real binding where installed, the simulator otherwise).
Any other ``sitecustomize`` further down the path still runs.
"""
import os
import sys


def _install_legacy():
    try:
        from labkit.runtime import legacy
        legacy.install()
    except Exception as exc:            # never break Python's start-up
        print(f"labkit sitecustomize: legacy shim not installed ({exc})", file=sys.stderr)


def _chain():
    """Run the next ``sitecustomize`` on the path, if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    own = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if own is not None:             # site.py looks this module up when we return
            sys.modules["sitecustomize"] = own


if __name__ == "sitecustomize":
    _install_legacy()
    _chain()
