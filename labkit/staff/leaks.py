"""Course staff: probe a student kit for working answers outside the student stubs.

    python -m labkit.staff.leaks student_kit/        # prints what it found; exit 1 if any

The kit must hold no working implementation of a graded task anywhere: not in the runtime,
not in the tests, not in the given parts of the student files. Four checks:

1. **Folders**: nothing of ``labkit/engine``, ``labkit/staff``, ``tests_staff`` or
   ``tests_hidden`` is in the kit.
2. **Solution lines**: no line of a removed student region (other than lines the reference
   also has outside every region) appears in any ``.py`` file of the kit.
3. **Behaviour**: every function the kit defines (module level, and static/class methods;
   the student stubs just raise NotImplementedError) is called, in a subprocess inside the kit, with each graded task's
   canonical inputs in the argument orders such a helper would take; a result equal to the
   reference's answer (up to a permutation of its values, so layouts don't hide it) is a
   leak. The tasks: convolution forward, input and weight gradients, img2col, col2im,
   max-pooling forward and backward, the Gram style-loss gradient, the softmax-loss gradient.

4. **The transfer loop**: the kit's own style-transfer machinery (``labkit.runtime.transfer``:
   ``Objective``, ``run_transfer``) is run, in a subprocess inside the kit, with stand-in
   network, loss layers and optimiser (the student's layer_3 classes replaced): with the
   student's ``transfer_loss`` and ``style_transfer`` still stubs, it must stop at a stub
   (NotImplementedError). A loss with its image gradient, or Adam steps, computed anyway
   mean the kit holds a working loop outside the stubs.

The answers come from this repository's reference solution, computed in another subprocess.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORBIDDEN = [os.path.join("labkit", "engine"), os.path.join("labkit", "staff"), "tests_staff",
             "tests_hidden"]

# --------------------------------------------------------------------------- the answers
ANSWERS_CODE = r'''
import sys
import numpy as np
from labkit.staff._stu_site.sitecustomize import install
install(sys.argv[2])
from stu_upload import layer_1, layer_2, layer_3
rng = np.random.default_rng(2024)
a = {}
a["x"] = rng.standard_normal((2, 3, 6, 7))
a["w"] = rng.standard_normal((3, 3, 3, 4))              # [Cin, K, K, Cout]
a["w_oihw"] = np.ascontiguousarray(a["w"].transpose(3, 0, 1, 2))
a["w_hwio"] = np.ascontiguousarray(a["w"].transpose(1, 2, 0, 3))
a["b"] = rng.standard_normal(4)
a["k"], a["pad"], a["stride"] = np.array(3), np.array(1), np.array(1)
conv = layer_2.ConvolutionalLayer(3, 3, 4, 1, 1, type=1)
conv.load_param(a["w"], a["b"])
a["ans_conv_forward"] = conv.forward(a["x"])
a["dy"] = rng.standard_normal(a["ans_conv_forward"].shape)
a["ans_conv_input_grad"] = conv.backward(a["dy"])
a["ans_conv_weight_grad"] = conv.d_weight
a["x_pad"] = layer_2.pad_nchw(a["x"], 1)
a["ans_img2col"] = layer_2.img2col(a["x_pad"], 3, 1)
a["dcols"] = rng.standard_normal(a["ans_img2col"].shape)
a["ans_col2im"] = layer_2.col2im(a["dcols"], a["x_pad"].shape, 3, 1)
a["xp"] = rng.standard_normal((2, 3, 6, 8))
pool = layer_2.MaxPoolingLayer(2, 2, type=0)
a["ans_maxpool_forward"] = pool.forward(a["xp"])
a["dyp"] = rng.standard_normal(a["ans_maxpool_forward"].shape)
a["ans_maxpool_backward"] = pool.backward(a["dyp"])
a["feat"], a["feat_target"] = rng.standard_normal((1, 3, 4, 5)), rng.standard_normal((1, 3, 4, 5))
a["gram_target"] = layer_3.gram_matrix(a["feat_target"])
style = layer_3.StyleLossLayer()
style.forward(a["feat"], a["feat_target"])
a["ans_style_grad"] = style.backward(a["feat"], a["feat_target"])
a["scores"] = rng.standard_normal((4, 6))
a["labels"] = np.array([0, 5, 2, 2])
sm = layer_1.SoftmaxLossLayer()
a["prob"] = sm.forward(a["scores"])
sm.get_loss(a["labels"])
a["ans_softmax_grad"] = sm.backward()
np.savez(sys.argv[1], **a)
'''

# argument orders a helper for each task might take (names of arrays in the answers file)
TEMPLATES = {
    "conv_forward": [("x", "w", "b", "pad", "stride"), ("x", "w", "b", "pad"), ("x", "w", "b"),
                     ("x", "w_oihw", "b", "pad", "stride"), ("x", "w_oihw", "b", "pad"),
                     ("x", "w_hwio", "b", "pad", "stride"), ("x", "w", "b", "stride", "pad"),
                     ("x", "w", "b", "stride", "one", "pad"),
                     ("x", "w_oihw", "b", "stride", "one", "pad")],
    "conv_input_grad": [("dy", "w", "pad", "stride", "x_shape"), ("dy", "w", "x_shape", "pad",
                        "stride"), ("dy", "w", "pad", "stride"), ("x", "w", "dy", "pad", "stride"),
                        ("dy", "x", "w", "pad", "stride"), ("dy", "w_oihw", "pad", "stride",
                                                           "x_shape")],
    "conv_weight_grad": [("x", "dy", "k", "pad", "stride"), ("x", "dy", "pad", "stride"),
                         ("x", "w", "dy", "pad", "stride"), ("dy", "x", "k", "pad", "stride")],
    "img2col": [("x_pad", "k", "stride"), ("x", "k", "pad", "stride"),
                ("x", "k", "stride", "pad"), ("x_pad", "k")],
    "col2im": [("dcols", "x_pad_shape", "k", "stride"), ("dcols", "x_shape", "k", "pad",
                                                          "stride")],
    "maxpool_forward": [("xp", "pk", "ps"), ("xp", "pk"), ("xp",)],
    "maxpool_backward": [("xp", "yp", "dyp", "pk", "ps"), ("dyp", "xp", "pk", "ps"),
                         ("xp", "dyp", "pk", "ps"), ("xp", "yp", "dyp")],
    "style_grad": [("feat", "feat_target"), ("feat", "gram_target")],
    "softmax_grad": [("scores", "labels"), ("prob", "labels")],
}

# --------------------------------------------------------------------------- the probe
PROBE_CODE = r'''
import importlib.util, inspect, json, os, signal, sys, warnings
import numpy as np
kit, answers_path = sys.argv[1], sys.argv[2]
templates, files = json.loads(sys.argv[3]), json.loads(sys.argv[4])
A = dict(np.load(answers_path))
A.update(x_shape=A["x"].shape, x_pad_shape=A["x_pad"].shape, pk=2, ps=2, one=1,
         yp=A["ans_maxpool_forward"])
sys.path.insert(0, kit)
warnings.simplefilter("ignore")

class Timeout(BaseException):
    pass

def alarm(*_):
    raise Timeout()

signal.signal(signal.SIGALRM, alarm)

def arrays_in(value, depth=0):
    if isinstance(value, np.ndarray):
        yield value
    elif depth < 2 and isinstance(value, (tuple, list)):
        for v in value:
            yield from arrays_in(v, depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for v in value.values():
            yield from arrays_in(v, depth + 1)

def matches(value, want):
    for arr in arrays_in(value):
        if arr.size == want.size and arr.size > 0 and np.issubdtype(arr.dtype, np.number):
            got = np.sort(np.asarray(arr, dtype=np.float64).ravel())
            ref = np.sort(want.ravel())
            if np.allclose(got, ref, rtol=1e-6, atol=1e-9):
                return True
    return False

def functions(module):
    for name, obj in list(vars(module).items()):
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            yield name, obj
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for attr, member in list(vars(obj).items()):
                if isinstance(member, (staticmethod, classmethod)):
                    yield f"{name}.{attr}", getattr(obj, attr)

def arity_ok(fn, n):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    return len(required) <= n <= len(positional)

found, calls = [], 0
work = os.getcwd()
for rel in files:
    path = os.path.join(kit, rel)
    spec = importlib.util.spec_from_file_location("kitprobe_" + rel.replace(os.sep, "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    try:
        signal.alarm(10)
        spec.loader.exec_module(module)
    except BaseException as exc:
        print(f"note: {rel} did not import ({type(exc).__name__})", file=sys.stderr)
        continue
    finally:
        signal.alarm(0)
    for name, fn in functions(module):
        for task, orders in templates.items():
            want = A["ans_" + task]
            for order in orders:
                if not arity_ok(fn, len(order)):
                    continue
                args = [A[k].copy() if isinstance(A[k], np.ndarray) and A[k].ndim else
                        (int(A[k]) if isinstance(A[k], np.ndarray) else A[k]) for k in order]
                calls += 1
                try:
                    os.chdir(work)
                    signal.alarm(2)
                    result = fn(*args)
                except BaseException:
                    continue
                finally:
                    signal.alarm(0)
                if matches(result, want):
                    found.append(f"{rel}: {name}{tuple(order)} computes {task}")
                    break
print(json.dumps({"found": found, "calls": calls}))
'''


def _solution_lines(root, regions=None):
    """{normalised line: task} of removed student lines that the reference has nowhere else
    (``regions``: the reference's, as ``collect_regions(root)`` gives; None: collect them)."""
    from labkit.staff.kit import collect_regions, removed_solution_lines
    if regions is None:
        regions = collect_regions(root)
    return {l: t for l, t in removed_solution_lines(regions).items()
            if len(l) > 8 and not l.startswith(CONTROL)}


# lines that only steer (a loop header, a branch) are shared idioms, not answers
CONTROL = ("if ", "elif ", "else", "for ", "while ", "try", "except", "with ", "def ",
           "class ", "#")


def kit_py_files(kit):
    """Every .py file of the kit, relative to it, in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(kit):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        found += [os.path.relpath(os.path.join(dirpath, n), kit) for n in sorted(filenames)
                  if n.endswith(".py")]
    return found


def scan_lines(kit, root=ROOT, regions=None):
    """[problem]: a removed solution line found in any .py file of the kit (``regions``:
    the reference's, None: collected from ``root``)."""
    lines, problems = _solution_lines(root, regions), []
    for rel in kit_py_files(kit):
        with open(os.path.join(kit, rel), encoding="utf-8", errors="replace") as f:
            for no, line in enumerate(f, 1):
                task = lines.get(line.strip())
                if task:
                    problems.append(f"{rel}:{no}: solution line of task '{task}': "
                                    f"{line.strip()}")
    return problems


def scan_folders(kit):
    return [f"{rel}/ is in the kit (staff only)" for rel in FORBIDDEN
            if os.path.exists(os.path.join(kit, rel))]


def probe_calls(kit, root=ROOT, timeout=600):
    """([problem], number of calls): functions of the kit that compute a graded answer."""
    with tempfile.TemporaryDirectory() as tmp:
        answers = os.path.join(tmp, "answers.npz")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LABKIT_STU_DIR")}
        r = subprocess.run([sys.executable, "-c", ANSWERS_CODE, answers,
                            os.path.join(root, "stu_upload")], cwd=root, env={
                                **env, "PYTHONPATH": root}, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            return [f"could not compute the reference answers: {r.stderr.strip()[-500:]}"], 0
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        r = subprocess.run([sys.executable, "-c", PROBE_CODE, os.path.abspath(kit), answers,
                            json.dumps(TEMPLATES), json.dumps(kit_py_files(kit))], cwd=work,
                           env={**env, "PYTHONPATH": os.path.abspath(kit),
                                "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"},
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        last = (r.stdout.strip().splitlines() or [""])[-1]
        try:
            result = json.loads(last)
        except json.JSONDecodeError:
            return [f"the call probe failed: {r.stderr.strip()[-500:]}"], 0
        return [f"{f} (a working answer outside the stubs)" for f in result["found"]], \
            result["calls"]


LOOP_PROBE_CODE = r'''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
SCALE = {"relu1_1": 0.5, "relu2_1": 2.0}

class Net:                      # linear stand-in: features = scale * image
    mean_pixel = np.zeros(3)
    def forward(self, image, layer_list):
        return {n: SCALE[n] * image for n in layer_list}
    def backward(self, dloss, layer_name=None):
        d = dloss if isinstance(dloss, dict) else {layer_name: dloss}
        return sum(SCALE[n] * v for n, v in d.items())

class Content:
    def forward(self, x, y):
        return 0.5 * float(np.sum((x - y) ** 2))
    def backward(self, x, y):
        return x - y

class Style:                    # "Gram" = x^2 elementwise: same shape, same maths pattern
    def __init__(self, scale=1.0):
        self.gram_style, self.scale = None, scale
    def set_target(self, y):
        self.gram_style = y * y
        return self.gram_style
    def forward(self, x, style_layer=None):
        return 0.25 * float(np.sum((x * x - self.gram_style) ** 2))
    def backward(self, x, style_layer=None):
        return self.scale * x * (x * x - self.gram_style)

class Adam:
    def __init__(self, lr, shape):
        self.lr, self.mt, self.vt, self.step = lr, np.zeros(shape), np.zeros(shape), 0
    def update(self, x, grad):
        self.step += 1
        return x - 0.01 * self.lr * grad

import stu_upload.layer_3 as layer_3
layer_3.ContentLossLayer, layer_3.StyleLossLayer, layer_3.AdamOptimizer = Content, Style, Adam
from labkit.runtime import transfer
rng = np.random.default_rng(7)
content, style, image = (rng.standard_normal((1, 3, 4, 5)) for _ in range(3))
found = []
try:
    obj = transfer.Objective(Net(), content, style, "relu2_1", {"relu1_1": 1, "relu2_1": 1})
    total, grad, parts = obj(image)
    if np.isfinite(total) and np.all(np.isfinite(grad)) and np.any(grad):
        found.append("labkit/runtime/transfer.py: Objective computes the transfer loss and "
                     "its image gradient without the student's transfer_loss")
except NotImplementedError:
    pass
except Exception as exc:
    print(f"note: Objective: {type(exc).__name__}: {exc}", file=sys.stderr)
try:
    quad = lambda x: (float(np.sum(x * x)), 2 * x, {"content": 0.0, "style": 0.0, "tv": 0.0})
    result = transfer.run_transfer(quad, image, 2, "adam", 1.0)
    if result.steps == 2 and not np.array_equal(result.image, image):
        found.append("labkit/runtime/transfer.py: run_transfer takes Adam steps without "
                     "the student's style_transfer loop")
except NotImplementedError:
    pass
except Exception as exc:
    print(f"note: run_transfer: {type(exc).__name__}: {exc}", file=sys.stderr)
print(json.dumps({"found": found}))
'''


def probe_loop(kit, timeout=300):
    """[problem]: the kit's transfer machinery runs a loss or a loop of its own (check 4)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LABKIT_STU_DIR")}
    with tempfile.TemporaryDirectory() as work:
        r = subprocess.run([sys.executable, "-c", LOOP_PROBE_CODE, os.path.abspath(kit)],
                           cwd=work, env={**env, "PYTHONPATH": os.path.abspath(kit),
                                          "PYTHONDONTWRITEBYTECODE": "1"},
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    last = (r.stdout.strip().splitlines() or [""])[-1]
    try:
        found = json.loads(last)["found"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return [f"the loop probe failed: {r.stderr.strip()[-500:]}"]
    return [f"{f} (a working loop outside the stubs)" for f in found]


def find_leaks(kit, root=ROOT, regions=None):
    """Every problem of the four checks (empty: no leak found); ``regions``: the
    reference's, as ``collect_regions(root)`` gives (None: collected here)."""
    problems = scan_folders(kit) + scan_lines(kit, root, regions)
    found, _ = probe_calls(kit, root)
    return problems + found + probe_loop(kit)


def main(argv=None):
    p = argparse.ArgumentParser(description="Probe a student kit for working answers.")
    p.add_argument("kit", help="the student kit folder")
    args = p.parse_args(argv)
    problems = scan_folders(args.kit) + scan_lines(args.kit) + probe_loop(args.kit)
    found, calls = probe_calls(args.kit)
    for line in problems + found:
        print(line)
    print(f"{len(problems + found)} problem(s); {calls} probe calls", file=sys.stderr)
    return 1 if problems or found else 0


if __name__ == "__main__":
    sys.exit(main())
