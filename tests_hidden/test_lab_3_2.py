"""Exp 3.2 lab tests (hidden; staff only): the student's vgg19_demo.py on pycnml (the
simulator here) classifies the full-size fixture's cat like the float CPU reference.

Only the original interface is used: ``VGG19()``, ``build_model(param_path,
quant_param_path)``, ``load_model()``, ``load_image(path)``, ``forward()`` (its return value
is not used: the original returns nothing) and ``get_top5(label)``, which must run forward
itself. The student's module gets the grader's pycnml (lab_support.DlpRecorder): the nets it
builds live here, and what they computed is read from them, not from the student's objects.
The reference is computed here, not by the student's vgg_cpu.py, so a missing exp 3.1 costs
nothing in exp 3.2.
"""
import numpy as np
import pytest

from labkit.runtime.student import stu
from labkit.runtime.compare import expect, expect_shape
from lab_support import check_dlp_net, deferred, install_dlp_recorder, unwrap
from lab_support import file_weights as load_file_weights

MIN_CORRELATION = 0.99


@pytest.fixture(scope="module")
def net(full_fixture):
    try:
        recorder, restore = install_dlp_recorder(stu.vgg19_demo.module)
    except Exception as exc:        # no vgg19_demo.py, or it does not import
        yield exc
        return
    try:
        yield deferred(_build, full_fixture), recorder   # handed to the tests (unwrap)
    finally:
        restore()


def _build(full_fixture):
    vgg = stu.vgg19_demo.VGG19()
    vgg.build_model(param_path=full_fixture["mat"], quant_param_path=full_fixture["quant"])
    vgg.load_model()
    vgg.load_image(full_fixture["image"])
    return vgg


def file_weights(full_fixture):
    """The file's weights, read (once per grading) only when a net was built to check."""
    return load_file_weights(full_fixture["mat"])


def _unwrap(net):
    vgg, recorder = unwrap(net)
    return unwrap(vgg), recorder


def test_dlp_classifies_like_the_cpu(net, full_fixture):
    vgg, recorder = _unwrap(net)
    before = recorder.counts()
    vgg.forward()
    dlp = recorder.net_that_ran(before, "forward()")
    check_dlp_net(dlp, file_weights(full_fixture))
    prob = np.asarray(dlp.getOutputData(), dtype=np.float64).ravel()
    ref = full_fixture["prob"].ravel()
    expect_shape("the DLP net's output (class probabilities)", prob, ref.shape)
    corr = float(np.corrcoef(prob, ref)[0, 1])
    print(f"correlation with the CPU probabilities: {corr:.5f}")
    expect(int(prob.argmax()) == int(ref.argmax()),
           f"the cat's class on the DLP: yours {int(prob.argmax())}, expected "
           f"{int(ref.argmax())} (correlation with the float CPU probabilities {corr:.3f})")
    expect(corr > MIN_CORRELATION, f"the DLP probabilities' correlation with the float CPU's: "
           f"yours {corr:.3f}, threshold > {MIN_CORRELATION} (check the fc6 layout)")


def test_get_top5_runs_forward_itself(net, full_fixture):
    vgg, recorder = _unwrap(net)
    before = recorder.counts()
    label = int(full_fixture["prob"].argmax())
    result = vgg.get_top5(label)
    dlp = recorder.net_that_ran(before, f"get_top5({label})")   # the original kit's protocol
    check_dlp_net(dlp, file_weights(full_fixture), layout=False)
    out = np.asarray(dlp.getOutputData(), dtype=np.float64).ravel()
    order = list(np.argsort(-out, kind="stable"))
    top1, top5 = result[-2:]      # the original returns (time, top1, top5)
    expect((bool(top1), bool(top5)) == (order[0] == label, label in order[:5]),
           f"get_top5({label}) returned {result}; the net's output says top-1 {order[0]}, "
           f"top-5 {[int(i) for i in order[:5]]}: expected (top1 == label, label in top5)")
