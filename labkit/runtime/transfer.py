"""Around the student's style transfer (not a student file): the kit's extras wrap the
student's code as ``tune()`` does the layers; no transfer loss or loop is computed here.

``Objective`` binds the student's ``transfer_loss`` (style_transfer.py: the loss layers of
layer_3.py on the student's VGG19) to a run's targets: total = alpha * content +
beta * sum_l w_l style_l (+ tv_weight * tv, this kit's extra). The style target of each
layer is the blend of the style images' Gram matrices (``style_targets``); the loss layers'
gradients go back in one pass (``OnePassNet``). ``run_transfer`` runs the student's
``style_transfer`` loop (Adam) or SciPy's L-BFGS on the objective, calls ``on_step`` after
every step, handles Ctrl-C and non-finite losses, and can continue from a saved optimiser
state (exact resume).
"""
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from labkit.runtime import vgg19_spec as _spec
from labkit.runtime.student import runs_here, stu, to_student

FEATURE_LAYER_NAMES = _spec.FEATURE_LAYER_NAMES      # conv1_1 ... pool5


def ContentLossLayer():
    return stu.layer_3.ContentLossLayer()


def StyleLossLayer():
    return stu.layer_3.StyleLossLayer()


class StudentLosses:
    """The objective's default loss layers: the student's layer_3 layers (``content()``,
    ``style()``)."""

    @staticmethod
    def content():
        return ContentLossLayer()

    @staticmethod
    def style():
        return StyleLossLayer()


def AdamOptimizer(lr, diff_shape):
    return stu.layer_3.AdamOptimizer(lr, diff_shape)


LOOP_FUNCTIONS = ("transfer_loss", "style_transfer")


def check_loop_functions():
    """Raise AttributeError, naming the file and what to do, when the student's
    style-transfer file lacks transfer_loss or style_transfer (the original kit's file keeps
    its loop in ``__main__``, which neither the driver nor the grader runs)."""
    for name in LOOP_FUNCTIONS:
        try:
            getattr(stu.style_transfer, name)
        except AttributeError:
            raise AttributeError(
                f"the transfer loop: {stu.module_file('style_transfer')}.py has no {name}(); "
                f"write the loop in transfer_loss and style_transfer (style_transfer.py of "
                f"this kit), whatever the file is called: a loop in the file's __main__ "
                f"block is not run") from None


# ------------------------------------------------- one backward pass under the student's loss
class NotLinear(TypeError):
    """The student's transfer_loss did something with a pending image gradient other than
    adding, subtracting or scaling it (the objective then runs it as written)."""


class PendingGradient:
    """An image gradient not computed yet: sum_k c_k * (the back-propagation of dloss_k from
    layer_k) + ``dense``. ``OnePassNet.backward`` returns one; adding, subtracting and
    scaling them is exact (back-propagation is linear), and ``resolve()`` computes the whole
    sum with ONE backward pass (the network's ``backward({layer: dloss})``), not one per loss
    layer. Anything else raises NotLinear (NumPy's operators defer to these methods)."""
    __array_ufunc__ = None

    def __init__(self, net, terms, dense=None):
        self.net, self.terms, self.dense = net, terms, dense

    @staticmethod
    def _scalar(value):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise NotLinear(f"a pending image gradient can only be scaled by a number, not "
                            f"{type(value).__name__}")
        return value

    def _plus(self, other, sign):
        if isinstance(other, PendingGradient):
            terms = self.terms + [(sign * c, layer, d) for c, layer, d in other.terms]
            extra = other.dense
        else:
            if not isinstance(other, (np.ndarray, int, float, np.number)):
                raise NotLinear(f"cannot add {type(other).__name__} to a pending image gradient")
            terms, extra = self.terms, other
        if extra is not None and sign < 0:
            extra = -extra
        dense = extra if self.dense is None else (self.dense if extra is None
                                                  else self.dense + extra)
        return PendingGradient(self.net, terms, dense)

    def __add__(self, other):
        return self._plus(other, 1)

    __radd__ = __add__

    def __sub__(self, other):
        return self._plus(other, -1)

    def __rsub__(self, other):
        return (-self)._plus(other, 1)

    def __neg__(self):
        return self * -1.0

    def __mul__(self, factor):
        factor = self._scalar(factor)
        return PendingGradient(self.net, [(factor * c, layer, d) for c, layer, d in self.terms],
                               None if self.dense is None else self.dense * factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor):
        return self * (1.0 / self._scalar(divisor))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotLinear(f"a pending image gradient has no .{name}")

    def resolve(self):
        """The gradient as an array: one backward pass for every term, plus ``dense``."""
        dlosses = {}
        for c, layer, d in self.terms:
            part = d * c if c != 1 else d
            dlosses[layer] = part if layer not in dlosses else dlosses[layer] + part
        grad = self.net.backward(dlosses) if dlosses else None
        if self.dense is None:
            return grad
        return self.dense if grad is None else grad + self.dense


class OnePassNet:
    """The network as the student's transfer_loss sees it under the objective: ``forward``
    is the network's; ``backward(dloss, layer)`` returns a PendingGradient, so the loss
    layers' gradients are back-propagated together, in one pass, when the objective resolves
    the student's result (the original's one pass per loss layer made a step ~2x slower)."""

    def __init__(self, net):
        self._net = net

    def backward(self, dloss, layer_name=None):
        terms = ([(1.0, k, v) for k, v in dloss.items()] if isinstance(dloss, dict)
                 else [(1.0, layer_name, dloss)])
        return PendingGradient(self._net, terms)

    def __getattr__(self, name):
        return getattr(self._net, name)


def tv_loss(image):
    """Total variation: (sum of squared vertical + horizontal neighbour differences) / size.
    image (N, C, H, W) -> (loss float, gradient like image)."""
    dv = image[:, :, 1:, :] - image[:, :, :-1, :]
    dh = image[:, :, :, 1:] - image[:, :, :, :-1]
    size = image.size
    loss = (float(np.sum(np.square(dv))) + float(np.sum(np.square(dh)))) / size
    grad = np.zeros_like(image)
    grad[:, :, 1:, :] += 2 * dv / size
    grad[:, :, :-1, :] -= 2 * dv / size
    grad[:, :, :, 1:] += 2 * dh / size
    grad[:, :, :, :-1] -= 2 * dh / size
    return loss, grad


def deepest_layer(names):
    """The name among ``names`` that comes last in VGG19."""
    return max(names, key=FEATURE_LAYER_NAMES.index)


def normalise_weights(style_weights):
    """{layer: weight} -> weights that sum to 1 (equal weights become 1/L each)."""
    total = float(sum(style_weights.values()))
    if total <= 0:
        raise ValueError("style layer weights must add up to more than 0.")
    return {name: float(w) / total for name, w in style_weights.items()}


def normalise_blend(blend, count):
    """Blend weights of ``count`` style images -> a list summing to 1 (None: equal)."""
    if blend is None:
        return [1.0 / count] * count
    blend = [float(b) for b in blend]
    if len(blend) != count or min(blend) < 0 or not sum(blend) > 0:
        raise ValueError(f"style blend {blend}: give {count} weights >= 0 with a positive sum.")
    total = sum(blend)
    return [b / total for b in blend]


def style_targets(vgg, style_images, layers, reference_shapes, blend=None):
    """{layer: A} where A = sum_k blend_k * Gram_k is the blended style target of each layer.

    Gram_k is computed by the student's ``StyleLossLayer.set_target`` on the features of
    style image k. A style image of another size than the working image (``--style-scale``)
    has Gram sums over another number of pixels: its Gram is multiplied by
    (H_l W_l of ``reference_shapes[layer]``) / (H'_l W'_l of the style's features), so the
    target holds the style's statistics per pixel whatever size they were measured at.
    ``blend``: weights (normalised; None = equal).
    """
    weights = normalise_blend(blend, len(style_images))
    targets = {}
    for image, weight in zip(style_images, weights):
        feats = vgg.forward(image, list(layers))
        for name in layers:
            gram = StyleLossLayer().set_target(feats[name])
            ref_pixels = reference_shapes[name][2] * reference_shapes[name][3]
            pixels = feats[name].shape[2] * feats[name].shape[3]
            if pixels != ref_pixels:
                gram = gram * (ref_pixels / pixels)
            part = gram if weight == 1.0 else weight * gram
            targets[name] = part if name not in targets else targets[name] + part
    return targets


class Objective:
    """f(image) -> (total loss, dtotal/dimage, {part: loss}) for a built, loaded VGG19: the
    student's ``transfer_loss`` (style_transfer.py) with this run's targets, plus the
    optional total-variation term.

    Targets are computed once here: the content features of ``content_image`` at
    ``content_layer`` and the style Gram matrices of ``style_image`` (set_target), or, for a
    list of style images, their blend (``style_targets``; ``style_blend`` weights); each
    style layer's loss layer holds its Gram target, so transfer_loss gets ``None`` as the
    style features. ``loss_layers`` (optional): other loss layers with the same maths and
    interface, e.g. the tuned engine's: an object with ``content()`` and ``style()``
    (None: ``StudentLosses``, the student's layer_3 layers).
    ``one_pass``: transfer_loss sees the network through ``OnePassNet``, so its loss
    layers' gradients go back in ONE backward pass (exact: back-propagation is linear); a
    transfer_loss that does more with them than add and scale runs as written instead.
    """

    def __init__(self, vgg, content_image, style_image, content_layer, style_weights,
                 alpha=1.0, beta=500.0, tv_weight=0.0, style_blend=None, loss_layers=None,
                 one_pass=True):
        self.vgg = vgg
        self.one_pass = one_pass
        self.content_layer = content_layer
        self.style_weights = normalise_weights(style_weights)
        self.alpha, self.beta, self.tv_weight = float(alpha), float(beta), float(tv_weight)
        self.layer_list = sorted({content_layer, *self.style_weights},
                                 key=FEATURE_LAYER_NAMES.index)
        given = loss_layers is not None     # not the student's: handed to student code
        loss_layers = loss_layers or StudentLosses
        self.content_loss = loss_layers.content()
        content_feats = vgg.forward(content_image, self.layer_list)
        self.content_target = content_feats[content_layer]
        styles = style_image if isinstance(style_image, (list, tuple)) else [style_image]
        targets = style_targets(vgg, styles, list(self.style_weights),
                                {n: content_feats[n].shape for n in self.style_weights},
                                style_blend)
        self.style_loss = {}
        for name in self.style_weights:
            self.style_loss[name] = loss_layers.style()
            self.style_loss[name].gram_style = targets[name]    # the blended target A
        self._handed = ((lambda layer: to_student(layer, ("forward", "backward"))) if given
                        else (lambda layer: layer))
        self.evaluations = 0

    def style_target(self, name):
        """The style target A (N, C, C) of layer ``name``."""
        return self.style_loss[name].gram_style

    def part_names(self):
        return ["content"] + [f"style_{n}" for n in self.style_weights] + ["tv"]

    def transfer_loss(self, image, net=None):
        """The student's transfer_loss of ``image`` with this objective's targets, on ``net``
        (default: the network): (total, image gradient, {"content": .., "style": ..})."""
        return stu.style_transfer.transfer_loss(
            self.vgg if net is None else net, image, {self.content_layer: self.content_target},
            {name: None for name in self.style_weights}, self._handed(self.content_loss),
            {name: self._handed(layer) for name, layer in self.style_loss.items()},
            self.alpha, self.beta, {self.content_layer: 1.0}, dict(self.style_weights))

    def _loss_and_gradient(self, image):
        if self.one_pass and runs_here():   # (graded in the sandbox: as written)
            try:
                total, diff, losses = self.transfer_loss(image, OnePassNet(self.vgg))
                grad = diff.resolve() if isinstance(diff, PendingGradient) else diff
                if isinstance(grad, np.ndarray) and grad.dtype.kind == "f":
                    return total, grad, losses
            except Exception:       # not only adds and scales: run it as written (below);
                pass                # an error of the student's own shows there again
            self.one_pass = False
        return self.transfer_loss(image)

    def __call__(self, image):
        self.evaluations += 1
        total, grad, losses = self._loss_and_gradient(image)
        grad = np.asarray(grad)
        parts = {"content": float(losses["content"][self.content_layer])}
        for name in self.style_weights:
            parts[f"style_{name}"] = float(losses["style"][name])
        parts["tv"] = 0.0
        if self.tv_weight:
            parts["tv"], tv_grad = tv_loss(image)
            total += self.tv_weight * parts["tv"]
            grad = grad + self.tv_weight * tv_grad
        parts["style"] = sum(self.style_weights[n] * parts[f"style_{n}"]
                             for n in self.style_weights)
        return float(total), grad.astype(image.dtype, copy=False), parts


class NonFiniteLoss(Exception):
    pass


@dataclass
class TransferResult:
    image: np.ndarray                # the last image with a finite loss
    status: str                      # "done", "interrupted" or "nonfinite"
    steps: int                       # completed steps (counting from 0, not from start_step)
    image_step: int = 0              # how many steps ``image`` has had (counting from 0)
    history: list = field(default_factory=list)    # one dict per step of this call
    message: str = ""
    optimizer_state: dict = None     # Adam's {mt, vt, step} that goes with ``image``


def run_transfer(objective, image, steps, optimizer="adam", lr=1.0, bounds=None,
                 on_step=None, context=None, start_step=0, optimizer_state=None, live=None):
    """Optimise ``image`` for ``steps`` steps (Adam) or iterations (L-BFGS-B).

    ``on_step(step, image, record)`` is called after each step with the new image and a
    record {step, total, <parts>, seconds}. Ctrl-C: returns status "interrupted" with the
    current image (the caller saves it, then exits 130). A non-finite loss or gradient:
    returns status "nonfinite" with the last image whose loss was finite. The record of an
    Adam step holds the loss of the image *before* that step's update.
    ``bounds`` (low, high) per channel (3,) arrays limit L-BFGS-B's pixels.
    ``context``: a context manager to run the steps in (the tuned engine's threads).

    Resume: ``start_step`` numbers the steps from there (step start_step + 1 first);
    ``optimizer_state`` {mt, vt, step} restores Adam exactly (None: a fresh Adam). The
    result's ``optimizer_state`` is Adam's state that belongs to the result's image, and
    ``live['optimizer']`` (when a dict is given) holds the state after the latest step while
    ``on_step`` runs, so a checkpoint written there is consistent. L-BFGS keeps no state:
    a resumed L-BFGS restarts its history from the saved image.
    """
    state = {"good": image, "good_step": start_step, "current": image, "step": start_step,
             "history": [], "snaps": {start_step: optimizer_state}}

    def evaluate(x):
        with np.errstate(over="ignore", invalid="ignore"):
            total, grad, parts = objective(x)
        if not (np.isfinite(total) and np.all(np.isfinite(grad))):
            step = state["step"] + 1
            what = "loss" if not np.isfinite(total) else "gradient (loss finite)"
            if state["history"]:
                raise NonFiniteLoss(f"the {what} went from {state['history'][-1]['total']:.6g} "
                                    f"to {total:.6g} at step {step}")
            raise NonFiniteLoss(f"the {what} was not finite ({total:.6g}) at step {step}")
        state["good"], state["good_step"] = x, state["step"]
        return total, grad, parts

    def record(x, total, parts, seconds, opt_state=None):
        state["step"] += 1
        state["current"] = x
        snaps = state["snaps"]
        snaps[state["step"]] = opt_state
        for old in [k for k in snaps if k < state["step"] - 1]:
            del snaps[old]
        rec = {"step": state["step"], "total": total, **parts, "seconds": seconds}
        state["history"].append(rec)
        if live is not None:
            live["optimizer"] = opt_state
        if on_step is not None:
            on_step(state["step"], x, rec)

    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    try:
        with context if context is not None else contextlib.nullcontext():
            if optimizer == "adam":
                final = _run_adam(evaluate, record, image, steps, lr, optimizer_state)
            else:
                final = _run_lbfgs(evaluate, record, image, steps, bounds, state)
    except KeyboardInterrupt:
        return TransferResult(state["current"], "interrupted", state["step"], state["step"],
                              state["history"], f"interrupted after {state['step']} steps",
                              state["snaps"].get(state["step"]))
    except NonFiniteLoss as exc:
        return TransferResult(state["good"], "nonfinite", state["step"], state["good_step"],
                              state["history"],
                              f"{exc}; stopped and kept the last image with a finite loss "
                              f"(after step {state['good_step']}). Lower --lr or the loss "
                              f"weights.", state["snaps"].get(state["good_step"]))
    return TransferResult(final, "done", state["step"], state["step"], state["history"],
                          optimizer_state=state["snaps"].get(state["step"]))


class _StopLoop(Exception):
    """Carries a stop (Ctrl-C, a non-finite loss) out of the student's loop: an ordinary
    exception, so it also crosses the sandbox's callback channel; _run_adam re-raises the
    stop itself."""


def _run_adam(evaluate, record, image, steps, lr, optimizer_state=None):
    """The student's loop (style_transfer.py's ``style_transfer``) with the student's Adam,
    restored from ``optimizer_state`` for an exact resume; each step is recorded."""
    adam = AdamOptimizer(lr, image.shape)
    if optimizer_state is not None:                 # exact resume: the saved moments
        adam.mt = np.array(optimizer_state["mt"])
        adam.vt = np.array(optimizer_state["vt"])
        adam.step = int(optimizer_state["step"])
    last, stop = {}, {}

    def stopping(fn):
        def call(*args):
            try:
                return fn(*args)
            except (KeyboardInterrupt, NonFiniteLoss) as exc:
                stop["exc"] = exc
                raise _StopLoop(str(exc)) from None
        return call

    @stopping
    def loss_fn(x):
        last["start"] = time.perf_counter()
        total, grad, parts = evaluate(x)       # loss of x, the image before this update
        last.update(total=total, parts=parts)
        return total, grad

    @stopping
    def on_step(step, x, loss):
        # copies: a student's update may change mt / vt in place
        record(x, last["total"], last["parts"], time.perf_counter() - last["start"],
               {"mt": np.array(adam.mt), "vt": np.array(adam.vt), "step": adam.step})

    # to_student: graded in the sandbox, the student's loop calls these back here
    try:
        return stu.style_transfer.style_transfer(
            to_student(loss_fn, ("__call__",)), image, steps, lr, optimizer=adam,
            on_step=to_student(on_step, ("__call__",)))
    except Exception:
        if "exc" in stop:
            raise stop["exc"] from None
        raise


def _run_lbfgs(evaluate, record, image, steps, bounds, state):
    from scipy.optimize import Bounds, minimize
    shape, dtype = image.shape, image.dtype
    last = {"parts": None, "total": None, "t": time.perf_counter()}

    def fun(vec):
        total, grad, parts = evaluate(vec.reshape(shape).astype(dtype))
        last.update(parts=parts, total=total)
        return total, grad.astype(np.float64).reshape(-1)

    def callback(intermediate_result):       # SciPy passes an OptimizeResult
        x = np.asarray(intermediate_result.x)
        now = time.perf_counter()
        img = x.reshape(shape).astype(dtype)
        record(img, last["total"], last["parts"], now - last["t"])
        last["t"] = now

    box = None
    if bounds is not None:
        low = np.broadcast_to(np.asarray(bounds[0], np.float64).reshape(1, -1, 1, 1), shape)
        high = np.broadcast_to(np.asarray(bounds[1], np.float64).reshape(1, -1, 1, 1), shape)
        box = Bounds(low.reshape(-1), high.reshape(-1))
        image = np.clip(image, low, high)
    result = minimize(fun, image.astype(np.float64).reshape(-1), jac=True,
                      method="L-BFGS-B", bounds=box, callback=callback,
                      options={"maxiter": steps, "maxfun": steps * 4 + 20,
                               "ftol": 0.0, "gtol": 0.0})
    return result.x.reshape(shape).astype(dtype)
