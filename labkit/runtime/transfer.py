"""Style-transfer objective and optimisation loop (not a student file).

``Objective`` combines the student's loss layers (layer_3.py) with the student's VGG19
(style_transfer.py): total = alpha * content + beta * sum_l w_l style_l + tv_weight * tv,
with the image gradient from ONE backward pass. The style target of each layer is the
blend of the style images' Gram matrices (``style_targets``). ``run_transfer`` drives Adam
or L-BFGS, calls ``on_step`` after every step, handles Ctrl-C and non-finite losses, and can
continue from a saved optimiser state (exact resume).
"""
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from labkit.runtime import vgg19_spec as _spec
from labkit.runtime.student import stu

FEATURE_LAYER_NAMES = _spec.FEATURE_LAYER_NAMES      # conv1_1 ... pool5


def ContentLossLayer():
    return stu.layer_3.ContentLossLayer()


def StyleLossLayer():
    return stu.layer_3.StyleLossLayer()


class _WeightedStyleLoss:
    """The student's StyleLossLayer with its gradient times ``scale`` (the objective's
    beta * w_l): the interface of the tuned engine's style losses."""

    def __init__(self, layer, scale):
        self.layer, self.scale = layer, scale

    @property
    def gram_style(self):
        return self.layer.gram_style

    @gram_style.setter
    def gram_style(self, value):
        self.layer.gram_style = value

    def forward(self, input_layer):
        return self.layer.forward(input_layer)

    def backward(self, input_layer):
        return self.scale * self.layer.backward(input_layer)


class StudentLosses:
    """The objective's default loss layers: the student's layer_3 layers (``content()``;
    ``style(scale)``, whose gradient comes back times ``scale``)."""

    @staticmethod
    def content():
        return ContentLossLayer()

    @staticmethod
    def style(scale):
        return _WeightedStyleLoss(StyleLossLayer(), scale)


def AdamOptimizer(lr, diff_shape):
    return stu.layer_3.AdamOptimizer(lr, diff_shape)


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
    """f(image) -> (total loss, dtotal/dimage, {part: loss}) for a built, loaded VGG19.

    Targets are computed once here: the content features of ``content_image`` at
    ``content_layer`` and the style Gram matrices of ``style_image`` (set_target), or, for a
    list of style images, their blend (``style_targets``; ``style_blend`` weights).
    ``loss_layers`` (optional): other loss layers with the same maths, e.g. the tuned
    engine's: an object with ``content()`` -> a layer like ContentLossLayer and
    ``style(scale)`` -> a layer with ``gram_style``, ``forward(x)`` and a ``backward(x)``
    that returns ``scale`` x the gradient (None: ``StudentLosses``, the student's layer_3
    layers).
    """

    def __init__(self, vgg, content_image, style_image, content_layer, style_weights,
                 alpha=1.0, beta=500.0, tv_weight=0.0, parallel_map=None, style_blend=None,
                 loss_layers=None):
        self.vgg = vgg
        self.parallel_map = parallel_map
        self.content_layer = content_layer
        self.style_weights = normalise_weights(style_weights)
        self.alpha, self.beta, self.tv_weight = float(alpha), float(beta), float(tv_weight)
        self.layer_list = sorted({content_layer, *self.style_weights},
                                 key=FEATURE_LAYER_NAMES.index)
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
            self.style_loss[name] = loss_layers.style(self.beta * self.style_weights[name])
            self.style_loss[name].gram_style = targets[name]    # the blended target A
        self.evaluations = 0

    def style_target(self, name):
        """The style target A (N, C, C) of layer ``name``."""
        return self.style_loss[name].gram_style

    def part_names(self):
        return ["content"] + [f"style_{n}" for n in self.style_weights] + ["tv"]

    def _style_losses(self, feats):
        """{layer: (loss, dloss/dfeatures)}; the layers are independent, so a
        ``parallel_map(fn, items)`` given to the constructor (the tuned engine's) may run
        them at the same time."""
        def one(name):
            layer = self.style_loss[name]
            return layer.forward(feats[name]), layer.backward(feats[name])
        names = list(self.style_weights)
        results = (self.parallel_map or (lambda fn, items: [fn(i) for i in items]))(one, names)
        return dict(zip(names, results))

    def __call__(self, image):
        self.evaluations += 1
        feats = self.vgg.forward(image, self.layer_list)
        parts, dlosses = {}, {}

        def add(name, grad):
            dlosses[name] = grad if name not in dlosses else dlosses[name] + grad

        x = feats[self.content_layer]
        parts["content"] = self.content_loss.forward(x, self.content_target)
        add(self.content_layer, self.alpha * self.content_loss.backward(x, self.content_target))
        total = self.alpha * parts["content"]
        for name, (loss, grad) in self._style_losses(feats).items():
            weight = self.style_weights[name]
            parts[f"style_{name}"] = loss
            total += self.beta * weight * loss
            add(name, grad)         # the loss layer weighted it (its ``scale``)
        grad = self.vgg.backward(dlosses)
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


def _run_adam(evaluate, record, image, steps, lr, optimizer_state=None):
    adam = AdamOptimizer(lr, image.shape)
    if optimizer_state is not None:                 # exact resume: the saved moments
        adam.mt = np.array(optimizer_state["mt"])
        adam.vt = np.array(optimizer_state["vt"])
        adam.step = int(optimizer_state["step"])
    x = image
    for _ in range(steps):
        start = time.perf_counter()
        total, grad, parts = evaluate(x)       # loss of x, the image before this update
        x = adam.update(x, grad)
        # copies: a student's update may change mt / vt in place
        record(x, total, parts, time.perf_counter() - start,
               {"mt": np.array(adam.mt), "vt": np.array(adam.vt), "step": adam.step})
    return x        # finite: a finite gradient gives a finite Adam step


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
