"""Exp 3.1 / 3.3, part 1: fully connected, ReLU and softmax-loss layers.

Shapes: a batch is ``(N, D)``; the fully connected weight is ``[D_in, D_out]`` and its bias
``[1, D_out]`` (the original kit's layout). Every layer keeps the floating dtype it is given:
float32 for speed, float64 for gradient checks; integer input (a uint8 image) is converted to
float64. Constructor sizes must be whole positive numbers; every backward checks that
``top_diff`` has the shape of forward's output.
"""
import numpy as np

from stu_upload._base import (as_float, check_labels, check_param_shape, check_top_diff, need,
                             whole_positive)


class FullyConnectedLayer:
    """Y = X W + b.  X: (N, num_input) -> Y: (N, num_output).

    Cache between forward and backward: ``self.input`` (N, num_input).
    """

    def __init__(self, num_input, num_output):
        self.num_input = whole_positive("FullyConnectedLayer", "num_input", num_input)
        self.num_output = whole_positive("FullyConnectedLayer", "num_output", num_output)
        self.input = None
        self.weight = None
        self.bias = None

    def init_param(self, std=0.01, seed=0):
        """Normal(0, std) weights [num_input, num_output], zero bias [1, num_output]."""
        rng = np.random.default_rng(seed)
        self.weight = rng.standard_normal((self.num_input, self.num_output))
        self.weight *= std          # rng.normal(0, std, size)'s values, in half the time
        self.bias = np.zeros([1, self.num_output])

    def forward(self, input):
        """input (N, num_input) -> output (N, num_output) = input @ weight + bias.
        Integer input is converted to float64."""
        input = as_float(input, "FullyConnectedLayer.forward: input")
        if input.ndim != 2 or input.shape[1] != self.num_input:
            raise ValueError(f"FullyConnectedLayer.forward: input has shape {input.shape}, "
                             f"expected (N, {self.num_input}).")
        self.input = input
        weight = self.weight.astype(input.dtype, copy=False)
        bias = self.bias.astype(input.dtype, copy=False)
        # === STUDENT BEGIN: fc_forward ===
        # hint: eq. Y = X W + b; X is (N, num_input), W is [num_input, num_output]
        self.output = input @ weight + bias
        # === STUDENT END ===
        return self.output

    def backward(self, top_diff):
        """top_diff (N, num_output) -> bottom_diff (N, num_input); sets d_weight, d_bias."""
        x = need(self, "input")
        top_diff = check_top_diff(self, top_diff, (x.shape[0], self.num_output))
        weight = self.weight.astype(top_diff.dtype, copy=False)
        # === STUDENT BEGIN: fc_backward ===
        # hint: the gradients of Y = X W + b: d_weight [num_input, num_output],
        # hint: d_bias [1, num_output], bottom_diff (N, num_input)
        self.d_weight = x.T @ top_diff
        self.d_bias = top_diff.sum(axis=0, keepdims=True)
        bottom_diff = top_diff @ weight.T
        # === STUDENT END ===
        return bottom_diff

    def get_gradient(self):
        return self.d_weight, self.d_bias

    def update_param(self, lr):
        """Plain SGD step: W -= lr * dW, b -= lr * db."""
        self.weight = self.weight - lr * self.d_weight
        self.bias = self.bias - lr * self.d_bias

    def load_param(self, weight, bias):
        """weight [num_input, num_output]; bias [1, num_output] (or [num_output])."""
        bias = np.asarray(bias)
        if bias.ndim == 1:
            bias = bias.reshape(1, -1)
        check_param_shape(self, "weight", np.shape(weight), (self.num_input, self.num_output))
        check_param_shape(self, "bias", bias.shape, (1, self.num_output))
        self.weight = np.asarray(weight)
        self.bias = bias

    def save_param(self):
        return self.weight, self.bias


class ReLULayer:
    """Y = max(X, 0), any shape (integer input is converted to float64).
    Cache: ``self.input`` (only its sign is used)."""

    def __init__(self):
        self.input = None

    def forward(self, input):
        input = as_float(input, "ReLULayer.forward: input")
        self.input = input
        # === STUDENT BEGIN: relu_forward ===
        # hint: keep positive values, zero the rest
        output = np.maximum(input, 0)
        # === STUDENT END ===
        return output

    def backward(self, top_diff):
        """top_diff has the input's shape; the gradient passes where input > 0."""
        x = need(self, "input")
        top_diff = check_top_diff(self, top_diff, x.shape)
        # === STUDENT BEGIN: relu_backward ===
        # hint: dL/dX = dL/dY where X > 0, else 0
        bottom_diff = top_diff * (x > 0)
        # === STUDENT END ===
        return bottom_diff


class SoftmaxLossLayer:
    """Softmax over the last axis and the mean cross-entropy loss.

    forward: (N, K) scores -> (N, K) probabilities (integer scores are converted to float64).
    get_loss(label) with label (N,) class indices in [0, K) (checked).
    backward: the gradient of get_loss's loss w.r.t. the scores, (N, K).
    Cache: ``self.prob``, ``self.label_onehot``.
    """

    def __init__(self):
        self.prob = None
        self.label_onehot = None

    def forward(self, input):
        input = as_float(input, "SoftmaxLossLayer.forward: input")
        if input.ndim != 2:
            raise ValueError(f"SoftmaxLossLayer.forward: input has shape {input.shape}, "
                             f"expected (N, K) scores.")
        # === STUDENT BEGIN: softmax_forward ===
        # hint: softmax of each row: prob[n, k] = exp(x[n, k]) / sum_j exp(x[n, j]); scores
        # hint: of any size (1000 and more) must give finite probabilities
        shifted = input - np.max(input, axis=1, keepdims=True)
        exp = np.exp(shifted)
        self.prob = exp / np.sum(exp, axis=1, keepdims=True)
        # === STUDENT END ===
        return self.prob

    def get_loss(self, label):
        prob = need(self, "prob")
        label = check_labels(self, label, prob.shape[0], prob.shape[1])
        self.batch_size = prob.shape[0]
        self.label_onehot = np.zeros_like(prob)
        self.label_onehot[np.arange(self.batch_size), label] = 1.0
        tiny = np.finfo(prob.dtype).tiny
        loss = -np.sum(np.log(np.maximum(prob, tiny)) * self.label_onehot) / self.batch_size
        return loss

    def backward(self):
        prob = need(self, "prob")
        onehot = need(self, "label_onehot")
        # === STUDENT BEGIN: softmax_backward ===
        # hint: the gradient of the loss get_loss returns w.r.t. the scores, (N, K)
        bottom_diff = (prob - onehot) / self.batch_size
        # === STUDENT END ===
        return bottom_diff
