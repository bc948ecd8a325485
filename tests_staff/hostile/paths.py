"""Hostile submissions against the grader's file handling, its mode choice, its limits and
its restarts (issue 19; tests_staff/test_sandbox_paths.py). ``{VICTIM}`` is filled in by
the tests."""

# vgg_cpu.py of the reference: when the driver is run to check a pool5 dump, it leaves a
# symbolic link to a host file where the dump was; the test then rewrites "the dump" as root
POOL5_LINK = '''
import atexit as _ax, os as _os, sys as _sys
def _plant():
    a = _sys.argv
    if "--check-pool5" in a:
        p = a[a.index("--check-pool5") + 1]
        try:
            _os.replace(p, p + ".real")
            _os.symlink("{VICTIM}", p)
        except OSError:
            pass
_ax.register(_plant)
'''

# layer_1.py: fork three children that each hold 700 MB (the per-process limit is 1 GiB)
FORK_HOLD = '''
def hold_in_children(n=3, mb=700):
    import os, time
    import numpy as np
    r, w = os.pipe()
    kids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            a = np.ones(mb * 1024 * 1024 // 8)
            os.write(w, b"1")
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
    os.close(w)
    got, deadline = 0, time.time() + 40
    import select
    while got < n and time.time() < deadline:
        if select.select([r], [], [], 1)[0]:
            d = os.read(r, 16)
            if not d:
                break
            got += len(d)
    return got
'''

# a module-scoped fixture holding a student object, a test that loops in the student's
# ReLULayer.backward (the worker is killed at the time limit), and tests after it that use
# the fixture's object: they must pass (the fixture is made again in a fresh worker)
RESTART_TESTS = '''
import numpy as np
import pytest
from labkit.runtime.student import stu


@pytest.fixture(scope="module")
def fc():
    layer = stu.layer_1.FullyConnectedLayer(4, 3)
    layer.init_param()
    return layer


def test_a_before(fc):
    assert fc.forward(np.ones((2, 4))).shape == (2, 3)


def test_b_relu_backward_loops():
    r = stu.layer_1.ReLULayer()
    r.forward(np.ones((2, 3)))
    r.backward(np.ones((2, 3)))


@pytest.mark.parametrize("i", range(3))
def test_c_after(fc, i):
    assert fc.forward(np.ones((2, 4))).shape == (2, 3)


def test_d_layer_3_crashes_at_import():
    stu.layer_3.ContentLossLayer


def test_e_after_crash(fc):
    assert fc.forward(np.ones((2, 4))).shape == (2, 3)
'''
LOOP_BACKWARD = '''
def _loop(self, *a, **k):
    while True:
        pass
ReLULayer.backward = _loop
'''
EXIT_AT_IMPORT = "\nimport os\nos._exit(3)\n"

# A daemon forked in the worker at import (it lives for the whole grading) plants links in
# every test folder it can write to: at each name a root-side test writes or reads there
# (the in-process exp 3.1 driver's pool5.npy, a driver's checkpoint the test copies). The
# red-team's rootwrite.sh / ckleak2.sh; {VICTIM} is a host file root must never write.
PLANT_LINKS_DAEMON = '''
def _rt_daemon():
    import os, time
    t = os.path.join(os.path.dirname(os.getcwd()), "tmp", "t")
    end = time.time() + 600
    while time.time() < end:
        # tmp/t cannot be listed: the folders the tests make, by name
        tops = [os.path.join(t, n) for n in ("examples0", "ckpt0", "test_exp_3_1_file_kinds0",
                                             "test_resume_without_its_log0")]
        for top, dirs, files in (w for d in tops for w in os.walk(d)):
            for n in files + ["pool5.npy"]:
                if n.endswith((".npy", ".npz", ".csv")):
                    p = os.path.join(top, n)
                    try:
                        if not (os.path.islink(p) and os.readlink(p) == "{VICTIM}"):
                            os.symlink("{VICTIM}", p + ".x")
                            os.rename(p + ".x", p)
                    except OSError:
                        try:
                            os.unlink(p + ".x")
                        except OSError:
                            pass
        time.sleep(0.002)


def _rt_start():
    import os, sys
    if sys.argv and sys.argv[0].endswith("worker.py") and os.fork() == 0:
        os.setsid()
        try:
            _rt_daemon()
        finally:
            os._exit(0)


_rt_start()
'''
