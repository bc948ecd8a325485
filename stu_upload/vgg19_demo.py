"""Exp 3.2: VGG19 image classification on the DLP (Cambricon MLU270) through pycnml.

Written only against the pycnml API, so it runs unchanged on the real binding and, where
there is none, on the NumPy simulator ``labkit.runtime.pycnml_sim`` (INT8 conv/MLP, fp16
activations). ``BACKEND`` says which one was imported.

Shapes: input (1, 3, 224, 224) NCHW float, mean pixel subtracted; output: num_classes
probabilities. Layouts pycnml wants (handout note 2): conv filter ``[Cout, Cin, K, K]``
flattened (file: ``[K, K, Cin, Cout]``); MLP weight ``[Cout, Cin]`` flattened. pycnml's
flatten layer (``CnmlFlattenLayer``) flattens pool5 in H, W, C order, the order of the file's
fc6 weight ``[7, 7, C, Cout]``, so fc6 is ``[7*7*C, Cout]`` transposed (the original kit's
given code). Layer widths come from the .mat file, so the small test fixtures build the
same way.
"""
import os
import time

import numpy as np

try:
    import pycnml                                     # the real binding, on a DLP machine
except ImportError:
    from labkit.runtime import pycnml_sim as pycnml           # NumPy simulator elsewhere

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.calibrate import DEFAULT_QUANT, QUANT_LAYERS, read_quant_pairs
from labkit.runtime.cli import DEFAULT_WEIGHTS, UserError
from labkit.runtime.images import load_rgb, preprocess
from labkit.runtime.matfile import c_order, load_vgg19_mat

SIMULATED = bool(getattr(pycnml, "SIMULATOR", False))
BACKEND = pycnml.backend_name() if SIMULATED else "pycnml (Cambricon MLU270, real DLP)"


class VGG19(object):
    """VGG19 as a pycnml CnmlNet: 16 conv (3x3, stride 1, pad 1) + ReLU, 5 max-pools (2x2/2),
    flatten, fc6-fc8 (MLP, + ReLU after fc6, fc7), softmax."""

    def __init__(self):
        self.net = pycnml.CnmlNet(16)
        self.input_quant_params = []     # 19 pycnml.QuantParam, QUANT_LAYERS order
        self.filter_quant_params = []
        self.file = None                 # labkit.runtime.matfile.VGGWeights, read by build_model
        self.param_path = None
        self.image = None                # (1, 3, 224, 224) float32 after load_image
        self.prob = None                 # (num_classes,) float32 after forward
        self.loaded = False
        self.inference_time = None

    def build_model(self, param_path=DEFAULT_WEIGHTS, quant_param_path=DEFAULT_QUANT):
        """Read the weights file and the quant file; create the 44 layers of the net."""
        self.param_path = param_path
        inputs, filters = read_quant_pairs(quant_param_path, param_path)  # cheap check first
        self.file = load_vgg19_mat(param_path)           # widths; kept for load_model
        self.input_quant_params = [pycnml.QuantParam(p, s) for p, s in inputs]
        self.filter_quant_params = [pycnml.QuantParam(p, s) for p, s in filters]
        cout = {layer.name: layer.weight.shape[3] for layer in self.file.layers
                if layer.type == "conv"}                 # name -> output channels
        size = spec.IMAGE_SIZE
        self.net.setInputShape(1, 3, size, size)
        q = dict(zip(QUANT_LAYERS, self.input_quant_params))
        # === STUDENT BEGIN: dlp_build ===
        # hint: one layer per name of spec.LAB_LAYER_NAMES, in order (pycnml_api.md):
        # hint: conv 3x3, stride 1, pad 1, cout[name] outputs, input QuantParam q[name];
        # hint: max-pool 2x2, stride 2; flatten to [1, C5*7*7, 1, 1] (C5 = conv5_4's outputs);
        # hint: fc: an MLP layer with cout[name] outputs and q[name]; softmax over axis 1
        for name in spec.LAB_LAYER_NAMES:
            if name.startswith("conv"):
                self.net.createConvLayer(name, int(cout[name]), 3, 1, 1, 1, q[name])
            elif name.startswith("relu"):
                self.net.createReLuLayer(name)
            elif name.startswith("pool"):
                self.net.createPoolingLayer(name, 2, 2)
            elif name == "flatten":
                pooled = spec.POOL5_SIZE * spec.POOL5_SIZE
                self.net.createFlattenLayer(name, [1, int(cout["conv5_4"]) * pooled, 1, 1])
            elif name.startswith("fc"):
                self.net.createMlpLayer(name, int(cout[name]), q[name])
            else:
                self.net.createSoftmaxLayer(name, 1)
        # === STUDENT END ===
        self.loaded = False

    def load_model(self):
        """Load every conv/MLP layer's weights, in pycnml's layouts, with its filter QuantParam."""
        if self.file is None:
            raise RuntimeError("VGG19.load_model(): call build_model(param_path, "
                               "quant_param_path) first.")
        weights = {layer.name: layer for layer in self.file.layers if layer.type == "conv"}
        fq = dict(zip(QUANT_LAYERS, self.filter_quant_params))
        for i in range(self.net.size()):
            if not self.net.needToBeQuantized(i):
                continue
            name = self.net.getLayerName(i)
            w = weights[name].weight                     # [K, K, Cin, Cout] float32
            # === STUDENT BEGIN: dlp_load ===
            # hint: handout note 2: conv filter [K, K, Cin, Cout] -> [Cout, Cin, K, K];
            # hint: fc weight [H, W, Cin, Cout] -> [Cout, H*W*Cin] (pycnml's flatten runs over
            # hint: H, W, C, as the file does; fc7/fc8 have H = W = 1)
            if name.startswith("conv"):
                filt = np.transpose(w, [3, 2, 0, 1])
            else:
                filt = w.reshape(-1, w.shape[3]).T
            # === STUDENT END ===
            self.net.loadParams(i, c_order(filt, np.float64).ravel(),  # one row-major copy
                                weights[name].bias.ravel().astype(np.float64), fq[name])
        self.mean_pixel = self.file.mean_pixel
        self.class_names = self.file.class_names
        self.loaded = True

    def load_image(self, image_dir):
        """Any image -> RGB, bilinear 224x224, minus the mean pixel, (1, 3, 224, 224); sets the
        net's input."""
        if self.file is None:
            raise RuntimeError("VGG19.load_image(): call build_model() first (the mean pixel "
                               "comes from the weights file).")
        size = spec.IMAGE_SIZE
        self.image = preprocess(load_rgb(image_dir), self.file.mean_pixel, size, size,
                                np.float32)
        self.net.setInputData(self.image.ravel().astype(np.float64))
        return self.image

    def forward(self):
        """Run the net on the loaded image; returns the probabilities (num_classes,) float32."""
        if not self.loaded:
            raise RuntimeError("VGG19.forward(): the weights are not loaded; call "
                               "build_model(...) and load_model() first.")
        if self.image is None:
            raise RuntimeError("VGG19.forward(): no input; call load_image(path) first.")
        start = time.time()
        self.net.forward()
        self.inference_time = time.time() - start
        print(f"inference time: {self.inference_time:.6f} s")
        self.prob = np.asarray(self.net.getOutputData(), dtype=np.float32)
        return self.prob

    def top_k(self, k=5):
        """[(class index, class name, probability)] of the k most likely classes."""
        if self.prob is None:
            raise RuntimeError("VGG19.top_k(): call forward() first.")
        names = self.file.class_names
        order = np.argsort(-self.prob, kind="stable")[:k]
        return [(int(i), names[i] if i < len(names) else f"class {i}", float(self.prob[i]))
                for i in order]

    def get_top5(self, label):
        """Run forward() on the loaded image (as the original kit does) and return
        ``(top1_correct, top5_correct)`` against class ``label``."""
        self.forward()
        top = [idx for idx, _, _ in self.top_k(5)]
        return top[0] == int(label), int(label) in top

    def evaluate(self, file_list):
        """``file_list``: text file of lines "image_path label". Prints and returns
        ``(top1_accuracy, top5_accuracy)``; image paths are relative to the list's folder
        unless absolute or found from the current folder."""
        base = os.path.dirname(os.path.abspath(file_list))
        with open(file_list) as f:
            entries = [line.split() for line in f if line.strip() and not line.startswith("#")]
        bad = [e for e in entries if len(e) != 2 or not e[1].lstrip("-").isdigit()]
        if bad or not entries:
            raise UserError(f"{file_list}: expected lines 'image_path label' (label an "
                             f"integer class index); bad line: {' '.join(bad[0]) if bad else '(empty file)'}")
        top1 = top5 = 0
        for n, (path, label) in enumerate(entries, 1):
            if not os.path.isabs(path) and not os.path.exists(path):
                path = os.path.join(base, path)
            self.load_image(path)
            hit1, hit5 = self.get_top5(int(label))
            top1, top5 = top1 + hit1, top5 + hit5
            print(f"[{n}/{len(entries)}] {path}: label {label}, predicted {self.top_k(1)[0][0]}"
                  f" top-1 {'ok' if hit1 else '--'} top-5 {'ok' if hit5 else '--'}")
        acc1, acc5 = top1 / len(entries), top5 / len(entries)
        print(f"top-1 accuracy: {acc1:.4f} ({top1}/{len(entries)})")
        print(f"top-5 accuracy: {acc5:.4f} ({top5}/{len(entries)})")
        return acc1, acc5
