"""Exp 3.3, part 3: the style-transfer losses and the Adam optimiser.

Shapes: feature maps are NCHW ``(N, C, H, W)``; a Gram matrix is ``(N, C, C)``. Losses are
returned as Python floats; gradients keep the dtype of ``input_layer`` (float32 for speed,
float64 for gradient checks). Handout equations: content 3.10-3.11, style 3.12-3.15,
Adam 3.17.
"""
import numpy as np


def gram_matrix(features):
    """Eq. 3.12: (N, C, H, W) -> (N, C, C), ``G[n, i, j] = sum_hw X[n,i,h,w] X[n,j,h,w]``."""
    n, c = features.shape[:2]
    flat = features.reshape(n, c, -1)
    return flat @ flat.transpose(0, 2, 1)


def _check_same_shape(who, a, b):
    if a.shape != b.shape:
        raise ValueError(f"{who}: input_layer has shape {a.shape} but the target has shape "
                         f"{b.shape}; compute both with the same network layer on images of "
                         f"the same size.")


class ContentLossLayer:
    """L = 1/(2NCHW) * sum (X - Y)^2 (eq. 3.10); dL/dX = (X - Y) / (NCHW) (eq. 3.11).

    input_layer X and content_layer Y: (N, C, H, W) features of the same layer.
    """

    def forward(self, input_layer, content_layer):
        """-> loss (float)."""
        _check_same_shape("ContentLossLayer.forward", input_layer, content_layer)
        # === STUDENT BEGIN: content_loss_forward ===
        # hint: eq. 3.10; input_layer.size is N*C*H*W
        loss = np.sum(np.square(input_layer - content_layer)) / (2 * input_layer.size)
        # === STUDENT END ===
        return float(loss)

    def backward(self, input_layer, content_layer):
        """-> dL/dX, same shape and dtype as input_layer."""
        _check_same_shape("ContentLossLayer.backward", input_layer, content_layer)
        # === STUDENT BEGIN: content_loss_backward ===
        # hint: eq. 3.11
        bottom_diff = (input_layer - content_layer) / input_layer.size
        # === STUDENT END ===
        return bottom_diff.astype(input_layer.dtype, copy=False)


class StyleLossLayer:
    """L = 1/(4 N C^2 H^2 W^2) * sum_{n,i,j} (G - A)^2 (eqs. 3.12-3.13), with G the Gram
    matrix of input_layer X (N, C, H, W) and A the Gram matrix of style_layer Y; backward
    eq. 3.15: dL/dX[n,i,h,w] = 1/(N C^2 H^2 W^2) sum_j X[n,j,h,w] (G - A)[n,j,i].

    The style Gram A is computed once and cached: either call ``set_target(style_layer)``
    and pass ``style_layer=None`` afterwards, or pass the same array object every call
    (a new object recomputes A; do not change the target array in place). backward()
    reuses the G of the forward() that was given the same input_layer object.
    """

    def __init__(self):
        self.style_source = None      # the array A was computed from
        self.gram_style = None        # A: (N, C, C)
        self.input = None             # the X of the last forward
        self.gram_input = None        # G: (N, C, C)

    def set_target(self, style_layer):
        """Compute and keep A = Gram(style_layer); returns A."""
        self.style_source = style_layer
        self.gram_style = gram_matrix(style_layer)
        return self.gram_style

    def _target(self, style_layer, input_layer):
        if style_layer is not None and style_layer is not self.style_source:
            self.set_target(style_layer)
        if self.gram_style is None:
            raise RuntimeError("StyleLossLayer: no style target; pass style_layer or call "
                               "set_target(style_features) first.")
        if self.gram_style.shape[1:] != (input_layer.shape[1],) * 2:
            raise ValueError(f"StyleLossLayer: the style Gram matrix is {self.gram_style.shape} "
                             f"but input_layer has {input_layer.shape[1]} channels; use the "
                             f"same network layer for both.")
        return self.gram_style.astype(input_layer.dtype, copy=False)

    def _gram_input(self, input_layer, reuse):
        """G of input_layer; backward reuses forward's G when given the same array."""
        if not (reuse and input_layer is self.input):
            self.input = input_layer
            self.gram_input = gram_matrix(input_layer)
        return self.gram_input

    def forward(self, input_layer, style_layer=None):
        """-> loss (float). input_layer (N, C, H, W); style_layer (N or 1, C, H', W')."""
        a = self._target(style_layer, input_layer)
        g = self._gram_input(input_layer, reuse=False)
        n, c, h, w = input_layer.shape
        # === STUDENT BEGIN: style_loss_forward ===
        # hint: eq. 3.13 with g = G and a = A, both (N, C, C); mind the normaliser
        loss = np.sum(np.square(g - a)) / (4 * n * c ** 2 * h ** 2 * w ** 2)
        # === STUDENT END ===
        return float(loss)

    def backward(self, input_layer, style_layer=None):
        """-> dL/dX, same shape and dtype as input_layer (eq. 3.15)."""
        a = self._target(style_layer, input_layer)
        g = self._gram_input(input_layer, reuse=True)
        n, c, h, w = input_layer.shape
        # === STUDENT BEGIN: style_loss_backward ===
        # hint: eq. 3.15 with g = G and a = A (N, C, C); the result has input_layer's
        # hint: shape (N, C, H, W)
        flat = input_layer.reshape(n, c, h * w)
        bottom_diff = ((g - a).transpose(0, 2, 1) @ flat) / (n * c ** 2 * h ** 2 * w ** 2)
        bottom_diff = bottom_diff.reshape(n, c, h, w)
        # === STUDENT END ===
        return bottom_diff.astype(input_layer.dtype, copy=False)


class AdamOptimizer:
    """Adam (eq. 3.17): beta1 0.9, beta2 0.999, eps 1e-8.

    ``update(input, grad)`` returns the updated array (same shape ``diff_shape`` and dtype
    as ``input``). State: first moment ``mt``, second moment ``vt``, step count ``step``.
    """

    def __init__(self, lr, diff_shape, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr = float(lr)
        self.diff_shape = tuple(diff_shape)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.mt = np.zeros(self.diff_shape)
        self.vt = np.zeros(self.diff_shape)
        self.step = 0

    def update(self, input, grad):
        if input.shape != self.diff_shape or grad.shape != self.diff_shape:
            raise ValueError(f"AdamOptimizer.update: input {input.shape} and grad {grad.shape} "
                             f"must both have the shape given to the constructor, "
                             f"{self.diff_shape}.")
        if self.mt.dtype != grad.dtype:      # keep the moments in the image's precision
            self.mt = self.mt.astype(grad.dtype)
            self.vt = self.vt.astype(grad.dtype)
        self.step += 1
        t = self.step
        # === STUDENT BEGIN: adam_update ===
        # hint: eq. 3.17 with t the number of updates so far (this one included)
        self.mt = self.beta1 * self.mt + (1 - self.beta1) * grad
        self.vt = self.beta2 * self.vt + (1 - self.beta2) * np.square(grad)
        mt_hat = self.mt / (1 - self.beta1 ** t)
        vt_hat = self.vt / (1 - self.beta2 ** t)
        output = input - self.lr * mt_hat / (np.sqrt(vt_hat) + self.eps)
        # === STUDENT END ===
        return output.astype(input.dtype, copy=False)
