"""labkit/runtime/legacy.py (the shim for code of the original environment), the kit root's
sitecustomize.py and pycnml.py: run in fresh interpreters, as the original drivers are."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from labkit.runtime import legacy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code, pythonpath=ROOT, cwd=None, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("LABKIT_LEGACY", "PYTHONPATH")}
    full.update(env)
    if pythonpath:
        full["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, cwd=cwd or ROOT, timeout=120)


LEGACY_CODE = """
import numpy as np
from scipy.misc import imread, imresize, imsave
assert np.float is float and np.int is int and np.object is object and np.bool(1)
x = np.zeros(3, dtype=np.float)
print('ok', x.dtype, imresize(np.zeros((4, 6, 3), np.uint8), (2, 3)).shape)
"""


def test_pythonpath_at_the_kit_root_installs_the_shim(tmp_path):
    r = run_py(LEGACY_CODE, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "ok float64 (2, 3, 3)" in r.stdout


def test_scipy_misc_is_an_attribute_after_import_scipy_io(tmp_path):
    """The original given vgg19_demo.py: ``import scipy.io``, then ``scipy.misc.imread``."""
    code = ("import scipy.io\nimport numpy as np\n"
            "print('ok', scipy.misc.imresize(np.zeros((4, 6, 3), np.uint8), (2, 3)).shape)\n")
    r = run_py(code, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "ok (2, 3, 3)" in r.stdout
    r = run_py(code, cwd=str(tmp_path), LABKIT_LEGACY="0")       # negative control
    assert r.returncode != 0 and "misc" in r.stderr


def test_the_shim_is_off_with_labkit_legacy_0(tmp_path):
    r = run_py(LEGACY_CODE, cwd=str(tmp_path), LABKIT_LEGACY="0")
    assert r.returncode != 0
    assert "imread" in r.stderr or "np.float" in r.stderr or "float" in r.stderr


def test_imresize_is_bilinear_through_pillow_with_scipy_1_2_ranges(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    out = legacy.imresize(img, (10, 12))
    expect = np.array(Image.fromarray(img).resize((12, 10), Image.BILINEAR))
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3)
    assert np.array_equal(out, expect)
    assert legacy.imresize(img, 50).shape == (10, 15, 3)        # int: percent
    assert legacy.imresize(img, 0.5).shape == (10, 15, 3)       # float: fraction
    # non-uint8 arrays are byte-scaled min..max -> 0..255 (SciPy 1.2's bytescale)
    ramp = np.linspace(-1.0, 3.0, 5).reshape(1, 5)
    assert legacy.bytescale(ramp).tolist() == [[0, 64, 128, 191, 255]]
    path = str(tmp_path / "a.png")
    legacy.imsave(path, img)
    back = legacy.imread(path)
    assert back.dtype == np.uint8 and np.array_equal(back, img)
    assert legacy.imread(path, flatten=True).dtype == np.float32


def test_numpy_aliases_are_the_builtins():
    legacy.patch_numpy(np)
    assert np.float is float and np.int is int and np.object is object


def test_import_pycnml_is_the_simulator_without_a_binding(tmp_path):
    r = run_py("import pycnml; print(pycnml.SIMULATOR, pycnml.__name__)", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "labkit.runtime.pycnml_sim"]


def test_import_pycnml_prefers_an_installed_binding(tmp_path):
    """The kit's pycnml.py never shadows the real binding further down sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "pycnml.py").write_text("REAL = True\n")
    r = run_py("import pycnml; print(getattr(pycnml, 'REAL', False), pycnml.__file__)",
               pythonpath=os.pathsep.join([ROOT, str(site)]), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "True" and str(site) in r.stdout


GIVEN_LAYERS_2 = '''import numpy as np


class MaxPoolingLayer(object):
    def __init__(self, kernel_size, stride):
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, input):
        self.input = input
        height_out = (self.input.shape[2] - self.kernel_size) / self.stride + 1
        width_out = (self.input.shape[3] - self.kernel_size) / self.stride + 1
        own = (self.input.shape[3] - self.kernel_size) / self.stride + 1.0
        return np.zeros([input.shape[0], input.shape[1], height_out, width_out]), own
'''


def test_the_original_given_python2_lines_run_and_the_students_own_as_written(tmp_path):
    """The original kit's given exp 3.1 code: output sizes with '/' (exactly the known given
    lines run as '//') and siblings imported without a dot; a student's own '/' stays '/'."""
    pkg = tmp_path / "stu_upload"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers_2.py").write_text(GIVEN_LAYERS_2)
    (pkg / "vgg_cpu.py").write_text("from layers_2 import MaxPoolingLayer\nimport layers_2\n")
    code = ("import numpy as np\nfrom stu_upload.vgg_cpu import MaxPoolingLayer\n"
            "import stu_upload.vgg_cpu as v\nassert v.layers_2.MaxPoolingLayer is MaxPoolingLayer\n"
            "out, own = MaxPoolingLayer(2, 2).forward(np.zeros((1, 1, 6, 7)))\n"
            "print('ok', out.shape, own)\n")
    r = run_py(code, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "ok (1, 1, 3, 3) 3.5" in r.stdout
    assert not list(pkg.glob("__pycache__/*layers_2*.pyc"))     # no rewritten code cached
    r = run_py(code, cwd=str(tmp_path), LABKIT_LEGACY="0")       # negative control
    assert r.returncode != 0 and ("layers_2" in r.stderr or "float" in r.stderr)
