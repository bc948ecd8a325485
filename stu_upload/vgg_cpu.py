"""Exp 3.1: VGG19 image classification on the CPU with the layers of layer_1/layer_2.

The weights come from MatConvNet's ``imagenet-vgg-verydeep-19.mat`` (both layouts; read
by ``labkit.runtime.matfile``). Channel widths are taken from the file, so the same code runs the
real network and the tests' small fixtures. Shapes: input (1, 3, 224, 224) NCHW, mean pixel
subtracted; pool5 (1, C5, 7, 7); output probabilities (1, num_classes).
"""
import sys
import time

import numpy as np

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.images import load_rgb, preprocess
from labkit.runtime.matfile import c_order, load_vgg19_mat
from stu_upload.layer_1 import FullyConnectedLayer, ReLULayer, SoftmaxLossLayer
from stu_upload.layer_2 import ConvolutionalLayer, FlattenLayer, MaxPoolingLayer


class VGG19:
    """VGG19 = 16 conv (3x3, pad 1, stride 1) + ReLU, 5 max-pools (2x2/2), flatten,
    fc6-fc8 (+ ReLU), softmax. ``type=1`` uses the img2col layers, ``type=0`` the loops."""

    def __init__(self, param_path="models/imagenet-vgg-verydeep-19.mat", type=1,
                 dtype=np.float32, verbose=True):
        self.param_path = param_path
        self.type = type
        self.dtype = np.dtype(dtype)
        self.verbose = verbose
        self.param_layer_name = list(spec.LAB_LAYER_NAMES)     # 44 names, with 'flatten'
        self.file = None            # labkit.runtime.matfile.VGGWeights, read once by build_model
        self.layers = {}
        self.input_image = None
        self.pool5 = None

    def _read_file(self):
        if self.file is None:
            self.file = load_vgg19_mat(self.param_path)
        return self.file

    def build_model(self):
        """Create every layer of ``param_layer_name`` in ``self.layers``."""
        widths = {layer.name: layer.weight.shape for layer in self._read_file().layers
                  if layer.type == "conv"}      # name -> [K, K, Cin, Cout]
        self.layers = {}
        for name in self.param_layer_name[:37]:
            # === STUDENT BEGIN: vgg_build ===
            # hint: VGG19: 3x3 convolutions, padding 1, stride 1, widths from the file
            # hint: (widths[name] is [K, K, Cin, Cout]); a ReLU after each; 2x2 max-pooling,
            # hint: stride 2; conv and pool layers take self.type (0 loops, 1 img2col)
            if name.startswith("conv"):
                cin, cout = widths[name][2:]
                self.layers[name] = ConvolutionalLayer(3, cin, cout, 1, 1, self.type)
            elif name.startswith("relu"):
                self.layers[name] = ReLULayer()
            else:
                self.layers[name] = MaxPoolingLayer(2, 2, self.type)
            # === STUDENT END ===
        c5 = widths["conv5_4"][3]
        size = spec.POOL5_SIZE
        self.layers["flatten"] = FlattenLayer([c5, size, size], [size * size * c5])
        for fc, relu in (("fc6", "relu6"), ("fc7", "relu7"), ("fc8", None)):
            k, _, cin, cout = widths[fc]
            self.layers[fc] = FullyConnectedLayer(k * k * cin, cout)
            if relu:
                self.layers[relu] = ReLULayer()
        self.layers["softmax"] = SoftmaxLossLayer()

    def init_model(self):
        """Random initial parameters (std 0.01), overwritten by load_model()."""
        for i, name in enumerate(self.param_layer_name):
            if hasattr(self.layers[name], "init_param"):
                self.layers[name].init_param(std=0.01, seed=i)

    def load_model(self):
        """Copy the file's weights into the layers, converted to the lab's layouts:
        conv [K, K, Cin, Cout] -> [Cin, K, K, Cout]; fc [K, K, Cin, Cout] -> [K*K*Cin, Cout]
        (H, W, C order, matching FlattenLayer)."""
        weights = self._read_file()
        for layer in weights.layers:
            if layer.type != "conv":
                continue
            w = c_order(layer.weight, self.dtype)      # a row-major copy (the file's is not)
            b = layer.bias.astype(self.dtype)
            if layer.name.startswith("conv"):
                self.layers[layer.name].load_param(np.transpose(w, [2, 0, 1, 3]), b)
            else:
                self.layers[layer.name].load_param(w.reshape(-1, w.shape[3]), b)
        self.mean_pixel = weights.mean_pixel
        self.class_names = weights.class_names

    def load_image(self, image_dir):
        """Any image -> RGB, bilinear resize to 224x224, minus the mean pixel, NCHW."""
        mean = self._read_file().mean_pixel
        self.input_image = preprocess(load_rgb(image_dir), mean, spec.IMAGE_SIZE,
                                      spec.IMAGE_SIZE, self.dtype)
        return self.input_image

    def forward(self):
        """Run every layer on ``input_image``; returns probabilities (1, num_classes)."""
        if self.input_image is None:
            raise RuntimeError("VGG19.forward(): no input; call load_image(path) first.")
        start = time.time()
        current = self.input_image
        on_terminal = sys.stdout.isatty()       # one rewritten line there, plain lines in logs
        for i, name in enumerate(self.param_layer_name):
            if self.verbose:
                line = f"Inferencing layer {i + 1:2d}/{len(self.param_layer_name)}: {name}"
                print(line.ljust(40) if on_terminal else line,
                      end="\r" if on_terminal else "\n", flush=True)
            current = self.layers[name].forward(current)
            if name == "pool5":
                self.pool5 = current
        self.inference_time = time.time() - start       # the driver prints it
        if self.verbose and on_terminal:
            print()
        self.prob = current
        return current

    def top_k(self, k=5):
        """[(class index, class name, probability)] of the k most likely classes."""
        prob = self.prob[0]
        order = np.argsort(-prob, kind="stable")[:k]
        names = getattr(self, "class_names", None) or self._read_file().class_names
        return [(int(i), names[i] if i < len(names) else f"class {i}", float(prob[i]))
                for i in order]

    def evaluate(self, k=5):
        """Print and return the top-k classes of the last forward()."""
        if getattr(self, "prob", None) is None:
            raise RuntimeError("VGG19.evaluate(): call forward() first.")
        result = self.top_k(k)
        print(f"Classification result: id = {result[0][0]}, prob = {result[0][2]:.6f} "
              f"({result[0][1]})")
        for rank, (idx, name, p) in enumerate(result, 1):
            print(f"  top-{rank}: {idx:4d}  {p:9.6f}  {name}")
        return result
