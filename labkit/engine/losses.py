"""The style-transfer losses, tuned (not a student file): the same maths as the student's
``stu_upload/layer_3.py`` (handout eqs. 3.10-3.15), computed for speed.

* The Gram matrix G = X X^T (X the features as (C, H*W)) is a symmetric rank-k update: NumPy
  calls BLAS ``syrk`` for ``a @ a.T`` on the same buffer (half the multiplies of a GEMM,
  no transposed copy). Inside ``labkit.engine.perf.engine_threads()`` the H*W columns are
  split over the engine's threads (each thread adds up its own columns; the C x C partial
  sums are added at the end), so one large layer (relu1_1: 64 x 262144 at 512x512) no
  longer runs on one thread while the other waits.
* The gradient dL/dX = s (G - A)^T X (eq. 3.15) folds every scalar (the normaliser of
  eq. 3.13 and the loss weight ``scale`` the objective gives the layer) into the small
  C x C matrix, so the large output is written once, by the GEMM, by column ranges on the
  threads.

``StyleLoss(scale)`` returns ``scale`` x the gradient of the (unweighted) loss; the loss it
returns is the unweighted one (``labkit.runtime.transfer.Objective`` adds it with its weight).
"""
import numpy as np

from labkit.engine.conv_algos import is_channels_last
from labkit.engine.perf import active_pool, run_split, split_ranges

MIN_SPLIT = 4096    # columns: below this one thread does the whole (small) product


def _flat(x):
    """(N, C, H, W) -> X (N, C, H*W), a view when x is contiguous or stored channels-last
    (then each X[n] is a Fortran-ordered (C, H*W) matrix: rows of the (H*W, C) array)."""
    n, c = x.shape[:2]
    return x.reshape(n, c, -1)


def gram(x, pool=None):
    """G (N, C, C) = X X^T per image, X = x[n] as (C, H*W) (eq. 3.12): ``syrk`` on ranges of
    the H*W columns, one range per thread of ``pool`` (None: one call), partial sums added."""
    flat = _flat(x)
    n, c, hw = flat.shape
    out = np.empty((n, c, c), dtype=x.dtype)
    ranges = split_ranges(hw, pool.workers if pool is not None and hw >= MIN_SPLIT else 1)
    for i in range(n):
        def part(lo, hi, f=flat[i]):
            a = f[:, lo:hi]
            return np.matmul(a, a.T)            # a and a.T share the buffer: BLAS syrk
        futures = [pool.submit(part, lo, hi) for lo, hi in ranges[1:]]
        total = part(*ranges[0])
        for future in futures:
            total += future.result()
        out[i] = total
    return out


class ContentLoss:
    """L = 1/(2NCHW) sum (X - Y)^2 (eq. 3.10); dL/dX = (X - Y)/(NCHW) (eq. 3.11).
    Same interface as the student's ``ContentLossLayer``."""

    def forward(self, input_layer, content_layer):
        diff = np.subtract(input_layer, content_layer)
        return float(np.vdot(diff, diff)) / (2 * input_layer.size)

    def backward(self, input_layer, content_layer):
        diff = np.subtract(input_layer, content_layer)
        diff *= diff.dtype.type(1.0 / input_layer.size)       # in place: one new array
        return diff


class StyleLoss:
    """L = 1/(4 N C^2 H^2 W^2) sum (G - A)^2 (eqs. 3.12-3.13); backward returns ``scale`` x
    dL/dX = scale/(N C^2 H^2 W^2) (G - A)^T X (eq. 3.15). ``gram_style`` = A (N, C, C), set
    by the objective. Interface: forward(x[, style_layer]) -> float, backward(x[, style_layer])
    -> array like x (the student's StyleLossLayer's)."""

    def __init__(self, scale=1.0):
        self.scale = float(scale)
        self.gram_style = None
        self.input = self.gram_input = self.diff = None

    def forward(self, input_layer, style_layer=None):
        """-> the unweighted loss; ``style_layer`` (optional): the style features, whose
        Gram matrix becomes the target (None: keep ``gram_style``)."""
        if style_layer is not None:
            self.gram_style = gram(style_layer, active_pool())
        if self.gram_style is None:
            raise RuntimeError("StyleLoss: set gram_style (the style target A) first.")
        n, c, h, w = input_layer.shape
        if self.gram_style.shape[1:] != (c, c):
            raise ValueError(f"StyleLoss: the style Gram matrix is {self.gram_style.shape} but "
                             f"the features have {c} channels.")
        self.input, self.gram_input = input_layer, gram(input_layer, active_pool())
        self.diff = np.subtract(self.gram_input, self.gram_style, dtype=np.float64)  # G - A
        return float(np.vdot(self.diff, self.diff)) / (4 * n * c ** 2 * h ** 2 * w ** 2)

    def backward(self, input_layer, style_layer=None):
        if input_layer is not self.input or style_layer is not None:
            self.forward(input_layer, style_layer)
        n, c, h, w = input_layer.shape
        s = self.scale / (n * c ** 2 * h ** 2 * w ** 2)
        # E = s (G - A), C x C: every scalar applied here, not to the large gradient; the
        # products take D = E^T as a transposed view (BLAS's transpose flag, no copy)
        e = np.multiply(self.diff, s).astype(input_layer.dtype, copy=False)
        self.input = self.gram_input = self.diff = None
        flat = _flat(input_layer)
        pool = active_pool() if flat.shape[2] >= MIN_SPLIT else None
        if is_channels_last(input_layer):
            # channels-last features (the engine's layout): dX^T = X^T D^T = X^T E, (H*W, C),
            # written in the same layout, so the backward pass reads it without a copy
            xt = input_layer.transpose(0, 2, 3, 1).reshape(n, h * w, c)
            out = np.empty((n, h * w, c), dtype=input_layer.dtype)
            for i in range(n):
                def pixels(lo, hi, i=i):
                    np.matmul(xt[i, lo:hi], e[i], out=out[i, lo:hi])
                run_split(pool, pixels, h * w)
            return out.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        out = np.empty(flat.shape, dtype=input_layer.dtype)
        for i in range(n):
            def cols(lo, hi, i=i):
                np.matmul(e[i].T, flat[i, :, lo:hi], out=out[i, :, lo:hi])
            run_split(pool, cols, flat.shape[2])
        return out.reshape(input_layer.shape)


class LossLayers:
    """The factories ``labkit.runtime.transfer.Objective(loss_layers=...)`` takes:
    ``content()`` and ``style(scale=1)`` (a style layer whose gradient comes back times
    ``scale``; the objective's is 1: the student's transfer_loss weights it)."""

    @staticmethod
    def content():
        return ContentLoss()

    @staticmethod
    def style(scale=1.0):
        return StyleLoss(scale)
