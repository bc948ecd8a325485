"""``import pycnml`` for code written for the DLP (e.g. the original kit's vgg19_demo.py); not
a student file.

Where the real Cambricon binding is installed, this module steps aside: it loads the real
``pycnml`` from the rest of ``sys.path`` and puts it in ``sys.modules``, so a kit root early
on the path never shadows it. Elsewhere ``pycnml`` is labkit's NumPy simulator
(``labkit.runtime.pycnml_sim``, ``pycnml.SIMULATOR`` is True).
"""
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _real_spec():
    paths = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("pycnml", paths)
    if spec is None or spec.origin is None:
        return None
    if os.path.abspath(spec.origin) == os.path.abspath(__file__):
        return None
    return spec


_spec = _real_spec()
if _spec is not None:                                   # the real binding
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)
else:                                                   # the simulator
    from labkit.runtime import pycnml_sim as _sim
    sys.modules[__name__] = _sim
