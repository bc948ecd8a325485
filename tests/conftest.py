"""Shared fixtures: small VGG19 .mat files with the real MatConvNet struct layout."""
import os
import sys

import numpy as np
import pytest

from labkit.runtime import forkserver, legacy
from labkit.runtime.fixtures import write_vgg19_mat
from labkit.runtime.images import make_demo_image, save_rgb
from labkit.runtime.student import StudentModules

# student code written for the original lab's NumPy/SciPy (np.float, scipy.misc.imread ...)
# runs as it did; LABKIT_LEGACY=0 turns this off (labkit/runtime/legacy.py)
legacy.install()

# the drivers tests start (python main_exp_3_x.py ...) are forks of a Python that imported
# NumPy and SciPy once, not a fresh start each (labkit/runtime/forkserver.py; Linux only;
# LABKIT_FORK_DRIVERS=0: a fresh Python each time)
_KIT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
forkserver.install([os.path.join(_KIT, f"main_exp_3_{n}.py") for n in (1, 2, 3)])

# grading (--grade, --stu-dir, --hidden, ...; inactive otherwise): labkit/staff/grading.py,
# in the course repository only (the student kit has no staff tools). When pytest took a
# student kit's folder for its rootdir (``--stu-dir KIT`` written with a space), the kit's
# ``labkit`` comes first on sys.path: load the plugin from this repository instead (it then
# refuses to grade: staff grade with ``python -m labkit.staff.grade``).
try:
    import labkit.staff.grading  # noqa: F401
except ImportError:
    if os.path.isdir(os.path.join(_KIT, "labkit", "staff")):
        for _name in [m for m in sys.modules if m == "labkit" or m.startswith("labkit.")]:
            del sys.modules[_name]
        sys.path.insert(0, _KIT)
        import labkit.staff.grading  # noqa: F401
if "labkit.staff.grading" in sys.modules:
    pytest_plugins = ["labkit.staff.grading"]




@pytest.fixture(scope="session")
def stu():
    """The student's modules: ``stu.layer_1.FullyConnectedLayer(7, 5)``. In the kit, the
    real ``stu_upload`` modules; when staff grade with ``--stu-dir``, proxies to the same
    modules running in a sandboxed worker (labkit/staff/grading.py)."""
    return StudentModules()     # graded in the sandbox, stu_upload is the proxy package


@pytest.fixture(scope="session")
def mat_files(tmp_path_factory):
    """{'legacy': path, 'meta': path}: VGG19 with channel widths / 16, 10 classes."""
    folder = tmp_path_factory.mktemp("mat")
    paths = {}
    for layout in ("legacy", "meta"):
        paths[layout] = str(folder / f"vgg19_{layout}.mat")
        write_vgg19_mat(paths[layout], layout=layout, width_div=16, num_classes=10, seed=3)
    return paths


@pytest.fixture(scope="session")
def tiny_mat(tmp_path_factory):
    """VGG19 with channel widths / 32 (2..16 channels): fast enough for the loop layers."""
    path = str(tmp_path_factory.mktemp("tiny") / "vgg19_tiny.mat")
    write_vgg19_mat(path, layout="legacy", width_div=32, num_classes=10, fc_width=32, seed=5)
    return path


@pytest.fixture(scope="session")
def demo_image(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("img") / "demo.png")
    save_rgb(make_demo_image(180, 260, seed=1), path)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

