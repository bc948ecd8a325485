"""The hostile submissions: (case, base, file, code, expected). ``base``: "kit" (blank student
kit) or "ref" (the reference solution); ``code`` is appended to ``stu_upload/<file>``
(``{ROOT}``, ``{JSON}``, ``{MARK}``, ``{SITE}`` are filled in). ``expected``: "zero" (0
points), "partial" (the tests that touch the fault fail, the others pass), "full".
Every attack targets one protection; docs: README, "For course staff".
"""
NEUTRALISER = '''
import os, glob
for _p in glob.glob("{ROOT}/tests/test_*.py") + glob.glob("{ROOT}/tests_hidden/test_*.py"):
    try:
        with open(_p, "a") as _f:
            _f.write("\\nimport pytest\\n@pytest.fixture(autouse=True)\\ndef _x():\\n    pytest.skip()\\n")
    except OSError:
        pass
'''
PYTEST_HOOK = '''
import gc, sys
try:
    import pytest
    for _o in gc.get_objects():
        if type(_o).__name__ == "PytestPluginManager":
            class _P:
                @pytest.hookimpl(hookwrapper=True)
                def pytest_runtest_makereport(self, item, call):
                    out = yield
                    out.get_result().outcome = "passed"
            _o.register(_P(), "evil")
except Exception:
    pass
'''
PATCH_TOTALS = '''
import gc
try:
    import labkit.staff.grading as _g
    _g.Grader.compute = lambda self: {{"points": 999}}
except ImportError:
    for _o in gc.get_objects():
        if type(_o).__name__ == "Grader":
            _o.compute = lambda: {{"points": 999}}
'''
ATEXIT = '''
import atexit, json
def _rewrite():
    for _p in ("{JSON}",):
        try:
            with open(_p, "w") as _f:
                json.dump({{"points": 999, "max_points": 999, "tests": []}}, _f)
        except OSError:
            pass
atexit.register(_rewrite)
'''
IMPORT_REFERENCE = '''
import importlib.util as _u
for _name in ("FullyConnectedLayer", "ReLULayer", "SoftmaxLossLayer"):
    pass
try:
    _spec = _u.spec_from_file_location("_ref_layer_1", "{ROOT}/stu_upload/layer_1.py")
    _ref = _u.module_from_spec(_spec)
    _spec.loader.exec_module(_ref)
    FullyConnectedLayer, ReLULayer, SoftmaxLossLayer = (
        _ref.FullyConnectedLayer, _ref.ReLULayer, _ref.SoftmaxLossLayer)
except Exception:
    pass
'''
ENGINE = '''
try:
    import labkit.engine.conv_algos as _eng      # the tuned engine: never in the scratch
    import labkit.staff.kit as _kit
    raise SystemExit("engine importable")
except ImportError:
    pass
'''
COPY_HIDDEN = '''
import shutil
try:
    shutil.copytree("{ROOT}/tests_hidden", "/tmp/{MARK}")
except OSError:
    pass
'''
LEAK_HIDDEN = '''
def _leak(self, *a, **k):
    import os
    src = ""
    try:
        src = open("{ROOT}/tests_hidden/test_hidden_layers.py").read()
    except OSError:
        pass
    raise ValueError("ENV=" + str(os.environ.get("PYTEST_CURRENT_TEST")) + " " + src[200:500])
FullyConnectedLayer.forward = _leak
'''
PTH = '''
try:
    with open("{SITE}/{MARK}.pth", "w") as _f:
        _f.write("import os; os.environ['PWNED'] = '1'\\n")
except OSError:
    pass
'''
EXIT_IMPORT = "\nimport os\nos._exit(0)\n"
SYSEXIT_IMPORT = "\nimport sys\nsys.exit(0)\n"
EXIT_METHOD = '''
def _die(self, *a, **k):
    import os
    os._exit(0)
ReLULayer.forward = _die
'''
SYSEXIT_METHOD = '''
def _die(self, *a, **k):
    import sys
    sys.exit(0)
ReLULayer.forward = _die
'''
LOOP_BASE = '''
def _loop(self, *a, **k):
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass
ReLULayer.forward = _loop
'''
LOOP_TIMER = '''
def _loop(self, *a, **k):
    import signal
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    while True:
        pass
ReLULayer.forward = _loop
'''
ALLOC = '''
def _big(self, *a, **k):
    import numpy as np
    return np.ones((3 * 1024 ** 3 // 8,))
ReLULayer.forward = _big
'''
DETACHED = '''
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", "{MARK}"])
    os._exit(0)
time.sleep(0.2)
'''
ZEROS = '''
import numpy as _np
def _z_fwd(self, x, *a, **k):
    shape = (x.shape[0], self.num_output) if hasattr(self, "num_output") else x.shape
    return _np.zeros(shape, x.dtype)
def _z_bwd(self, top_diff=None, *a, **k):
    shape = self.input.shape if getattr(self, "input", None) is not None else (1,)
    return _np.zeros(shape, top_diff.dtype if top_diff is not None else _np.float64)
def _z_store(f):
    def g(self, x, *a, **k):
        self.input = x
        return f(self, x)
    return g
for _cls in (FullyConnectedLayer, ReLULayer, SoftmaxLossLayer):
    _cls.forward = _z_store(_z_fwd)
    _cls.backward = _z_bwd
def _sm_fwd(self, x, *a, **k):
    self.input = x
    return _np.full(x.shape, 1.0 / x.shape[1], x.dtype)
SoftmaxLossLayer.forward = _sm_fwd
SoftmaxLossLayer.get_loss = lambda self, label: 0.0
'''

CASES = [
    # case,                  base,  file,           code,             expected
    ("neutraliser_init",      "kit", "__init__.py",   NEUTRALISER,      "zero"),
    ("pytest_hook_base",      "kit", "_base.py",      PYTEST_HOOK,      "zero"),
    ("patch_grader_totals",   "kit", "layer_1.py",    PATCH_TOTALS,     "zero"),
    ("atexit_rewrite_json",   "kit", "layer_1.py",    ATEXIT,           "zero"),
    ("import_reference",      "kit", "layer_1.py",    IMPORT_REFERENCE, "zero"),
    ("engine_and_staff",      "kit", "layer_1.py",    ENGINE,           "zero"),
    ("copy_hidden_out",       "kit", "layer_1.py",    COPY_HIDDEN,      "zero"),
    ("leak_hidden_env",       "ref", "layer_1.py",    LEAK_HIDDEN,      "partial"),
    ("pth_into_venv",         "kit", "layer_1.py",    PTH,              "zero"),
    ("os_exit_import",        "ref", "layer_1.py",    EXIT_IMPORT,      "zero"),
    ("sys_exit_import",       "ref", "layer_1.py",    SYSEXIT_IMPORT,   "zero"),
    ("os_exit_method",        "ref", "layer_1.py",    EXIT_METHOD,      "partial"),
    ("sys_exit_method",       "ref", "layer_1.py",    SYSEXIT_METHOD,   "partial"),
    ("loop_catch_base",       "ref", "layer_1.py",    LOOP_BASE,        "partial"),
    ("loop_timer_off",        "ref", "layer_1.py",    LOOP_TIMER,       "partial"),
    ("alloc_3gib",            "ref", "layer_1.py",    ALLOC,            "partial"),
    ("detached_child",        "ref", "layer_1.py",    DETACHED,         "full"),
    ("zero_layers",           "ref", "layer_1.py",    ZEROS,            "zero"),
]

# Exp 3.2's lab tests read everything from the student's own objects (``net.net`` is
# whatever the submission assigns: its getOutputData(), its forward_count), and the worker
# keeps state (module globals, $HOME) from one test to the next. Appended to ``vgg19_demo.py``
# these replace the pycnml network by a stand-in.
FAKE_DLP = '''
import os as _os
import numpy as _np
class _FakeNet:
    def __init__(self):
        self.forward_count = 0
        self.out = _np.full(1000, 1e-3)
    def getOutputData(self):
        return self.out
    def forward(self):
        self.forward_count += 1
        p = _os.path.join(_os.path.expanduser("~"), ".prob.npy")
        if _os.path.exists(p):
            self.out = _np.load(p).ravel()
class VGG19(object):
    def __init__(self):
        self.net = _FakeNet()
    def build_model(self, param_path=None, quant_param_path=None):
        pass
    def load_model(self):
        pass
    def load_image(self, image_dir):
        pass
    def forward(self):
        self.net.forward()
    def get_top5(self, label):          # the label comes from the grader's reference
        self.net.forward()
        self.net.out = _np.zeros(1000)
        self.net.out[label] = 1.0
        return 0.0, True, True
'''
# appended to ``layer_1.py``: keeps the float probabilities that hidden test_lab_3_1's
# test_classifies_the_cat computes with the student's tail on the grader's reference pool5
# (the same fixture as exp 3.2's); FAKE_DLP then replays them as "the DLP's" output
SPY_SOFTMAX = '''
_orig_sm_forward = SoftmaxLossLayer.forward
def _spy_forward(self, input, *a, **k):
    out = _orig_sm_forward(self, input, *a, **k)
    try:
        import os as _os, numpy as _np
        if _np.shape(out) == (1, 1000):
            _np.save(_os.path.join(_os.path.expanduser("~"), ".prob.npy"), _np.asarray(out))
    except Exception:
        pass
    return out
SoftmaxLossLayer.forward = _spy_forward
'''
