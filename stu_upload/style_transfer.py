"""Exp 3.3: non-real-time style transfer: the VGG19 feature network, the transfer loss and
the transfer loop.

The network is VGG19's convolutional part (conv1_1 ... pool5, 37 layers) built with the
img2col layers (``type=1``); its parameters are fixed, so the convolutions skip their
parameter gradients (``need_param_grad = False``) and only the image gradient flows back.
Shapes: image (1, 3, H, W) NCHW with the mean pixel subtracted; features (1, C, H', W').

``transfer_loss`` is one pass of the original lab's loop body (handout eqs. 3.10-3.16: the
content and style losses at their layers, each gradient back-propagated to the image, the
weighted sum); ``style_transfer`` is its loop over the steps (Adam, eq. 3.17).
``main_exp_3_3.py`` runs both.
"""
import numpy as np

from labkit.runtime import vgg19_spec as spec
from labkit.runtime.images import deprocess, load_rgb, preprocess, resize_bilinear, save_rgb
from labkit.runtime.matfile import load_vgg19_mat
from stu_upload.layer_1 import ReLULayer
from stu_upload.layer_2 import ConvolutionalLayer, MaxPoolingLayer
from stu_upload.layer_3 import AdamOptimizer

FEATURE_LAYER_NAMES = spec.FEATURE_LAYER_NAMES      # conv1_1 ... pool5


class VGG19:
    """Feature extractor with hand-written backward to the image.

    ``VGG19(param_path, dtype)``; ``build_model(last_layer='pool5')`` builds the layers up to
    ``last_layer`` only (a deeper layer is never needed by the losses); ``weights`` may be a
    ``labkit.runtime.matfile.VGGWeights`` already in memory instead of reading ``param_path``.
    """

    def __init__(self, param_path="models/imagenet-vgg-verydeep-19.mat", dtype=np.float32,
                 weights=None):
        self.param_path = param_path
        self.dtype = np.dtype(dtype)
        self.file = weights
        self.param_layer_name = list(FEATURE_LAYER_NAMES)
        self.layers = {}
        self.forward_depth = -1      # index of the deepest layer the last forward() ran

    def _read_file(self):
        if self.file is None:
            self.file = load_vgg19_mat(self.param_path)
        return self.file

    @property
    def mean_pixel(self):
        if getattr(self, "_mean_pixel", None) is None:
            self._mean_pixel = np.asarray(self._read_file().mean_pixel, dtype=np.float64)
        return self._mean_pixel

    def _index(self, name, what):
        if name not in self.param_layer_name:
            built = f"built up to {self.param_layer_name[-1]}" if self.layers else "not built"
            raise ValueError(f"{what}: '{name}' is not a layer of this network ({built}; "
                             f"names: {', '.join(FEATURE_LAYER_NAMES)}). "
                             f"Use build_model(last_layer=...) with the deepest layer you need.")
        return self.param_layer_name.index(name)

    def build_model(self, last_layer="pool5"):
        """Create conv (3x3, pad 1, img2col), relu and 2x2/2 max-pool layers up to last_layer."""
        if last_layer not in FEATURE_LAYER_NAMES:
            raise ValueError(f"build_model: last_layer '{last_layer}' is not one of "
                             f"{', '.join(FEATURE_LAYER_NAMES)}.")
        self.param_layer_name = FEATURE_LAYER_NAMES[:FEATURE_LAYER_NAMES.index(last_layer) + 1]
        widths = {layer.name: layer.weight.shape for layer in self._read_file().layers
                  if layer.type == "conv"}
        self.layers = {}
        for name in self.param_layer_name:
            if name.startswith("conv"):
                cin, cout = widths[name][2:]
                layer = ConvolutionalLayer(3, cin, cout, 1, 1, type=1)
                layer.need_param_grad = False      # the weights are fixed: image gradient only
            elif name.startswith("relu"):
                layer = ReLULayer()
            else:
                layer = MaxPoolingLayer(2, 2, type=1)
            self.layers[name] = layer
        self.forward_depth = -1

    def init_model(self):
        """Random parameters (std 0.01); load_model() overwrites them."""
        for i, name in enumerate(self.param_layer_name):
            if name.startswith("conv"):
                self.layers[name].init_param(std=0.01, seed=i)

    def load_model(self):
        """Load the built conv layers: file [K, K, Cin, Cout] -> lab [Cin, K, K, Cout]."""
        for layer in self._read_file().layers:
            if layer.name in self.layers and layer.type == "conv":
                weight = np.transpose(layer.weight, [2, 0, 1, 3]).astype(self.dtype)
                self.layers[layer.name].load_param(weight, layer.bias.astype(self.dtype))
        self.mean_pixel                     # keep the mean, then free the file's arrays
        if self.param_path is not None:     # (fc6 alone is 400 MB); build_model re-reads it
            self.file = None

    def forward(self, input_image, layer_list):
        """input_image (1, 3, H, W) -> {name: features} for the names in layer_list.

        Runs only up to the deepest requested layer; caches what backward() needs."""
        if not self.layers:
            raise RuntimeError("VGG19.forward: call build_model() and load_model() first.")
        wanted = set(layer_list)
        last = max(self._index(name, "VGG19.forward") for name in wanted)
        outputs = {}
        current = np.asarray(input_image, dtype=self.dtype)
        for name in self.param_layer_name[:last + 1]:
            # === STUDENT BEGIN: st_forward ===
            # hint: run the layer on the current features; keep the output if it is wanted
            current = self.layers[name].forward(current)
            if name in wanted:
                outputs[name] = current
            # === STUDENT END ===
        self.forward_depth = last
        return outputs

    def backward(self, dloss, layer_name=None):
        """Gradient of the loss w.r.t. the input image, (1, 3, H, W).

        ``backward(dloss, layer_name)``: dloss = dL/d(features of layer_name), back-propagated
        to the image (the original lab's form: one pass per loss layer).
        ``backward({name: dloss, ...})``: ONE pass from the deepest named layer; each named
        layer's gradient is added when the pass reaches that layer (same result, far faster).
        """
        dlosses = dloss if isinstance(dloss, dict) else {layer_name: dloss}
        if not dlosses or None in dlosses:
            raise ValueError("VGG19.backward: pass (dloss, layer_name) or a dict "
                             "{layer name: dloss}.")
        start = max(self._index(name, "VGG19.backward") for name in dlosses)
        if start > self.forward_depth:
            raise RuntimeError(f"VGG19.backward: the last forward() stopped before "
                               f"'{self.param_layer_name[start]}'; include that layer in "
                               f"forward's layer_list first.")
        current = None
        for idx in range(start, -1, -1):
            name = self.param_layer_name[idx]
            # === STUDENT BEGIN: st_backward ===
            # hint: if this layer has a loss gradient, add it to the gradient coming from
            # hint: above (the deepest one starts the pass); then back through the layer
            if name in dlosses:
                current = dlosses[name] if current is None else current + dlosses[name]
            current = self.layers[name].backward(current)
            # === STUDENT END ===
        return current

    def load_image(self, image_dir, image_height, image_width):
        """Any image file -> ``(image, original_shape)`` as in the original kit: image
        (1, 3, image_height, image_width), bilinear, minus the mean pixel; original_shape the
        picture's (H, W, 3), for save_image to resize back."""
        rgb = load_rgb(image_dir)
        image = preprocess(rgb, self.mean_pixel, image_height, image_width, self.dtype)
        return image, rgb.shape

    def save_image(self, input_image, image_shape, image_dir):
        """(1, 3, H, W) mean-subtracted -> image file, resized to ``image_shape`` (H0, W0[, 3])
        as in the original kit (an NCHW shape (1, 3, H, W) keeps the size). Returns the RGB
        array written (uint8, H0 x W0 x 3)."""
        image = np.asarray(input_image)
        if len(image_shape) == 4:
            image = np.reshape(image, image_shape)
        rgb = deprocess(image.reshape((1, 3) + image.shape[-2:]), self.mean_pixel)
        if len(image_shape) in (2, 3) and tuple(image_shape[:2]) != rgb.shape[:2]:
            rgb = resize_bilinear(rgb, int(image_shape[0]), int(image_shape[1]))
        save_rgb(rgb, image_dir)
        return rgb


def get_random_img(content_image, noise, rng=None):
    """Start image: noise * U(-20, 20) + (1 - noise) * content, in content's dtype.

    Drawn from NumPy's global generator (``np.random.uniform``) as in the original kit, so
    ``np.random.seed(1234)`` reproduces it; pass ``rng`` (a ``np.random.Generator``) to use
    your own generator instead."""
    if rng is None:
        noise_image = np.random.uniform(-20, 20, content_image.shape)
    else:
        noise_image = rng.uniform(-20, 20, content_image.shape)
    random_img = noise_image * noise + content_image * (1 - noise)
    return random_img.astype(content_image.dtype)


def equal_weights(layers):
    """{layer: 1/L}: every layer weighs the same (the original's mean over the layers)."""
    layers = list(layers)
    return {layer: 1.0 / len(layers) for layer in layers}


def transfer_loss(vgg, image, content_targets, style_targets, content_loss_layer,
                  style_loss_layers, alpha=1.0, beta=500.0, content_weights=None,
                  style_weights=None):
    """The total loss of ``image`` and its gradient (eq. 3.16):
    total = alpha * sum_l w_l content_loss_l + beta * sum_l w_l style_loss_l.

    ``vgg``: a built, loaded VGG19. ``content_targets``: {layer: the content image's
    features at that layer} (the original's CONTENT_LOSS_LAYERS). ``style_targets``:
    {layer: the style image's features at that layer, or None when that layer's loss
    layer already holds its Gram target (``set_target``)}. ``content_loss_layer``: a
    ContentLossLayer; ``style_loss_layers``: {layer: StyleLossLayer} (one per layer: each
    keeps its own Gram matrices). ``content_weights`` / ``style_weights``: {layer: w_l}
    (None: equal weights 1/L, the original's mean over the layers).

    Returns ``(total_loss, image_diff, losses)``: the loss (float), its gradient with
    respect to the image (the image's shape) and ``{"content": {layer: loss},
    "style": {layer: loss}}`` (the unweighted loss of each layer).
    """
    content_weights = content_weights or equal_weights(content_targets)
    style_weights = style_weights or equal_weights(style_targets)
    features = vgg.forward(image, list(content_targets) + list(style_targets))
    content_loss, style_loss = {}, {}
    content_diff = 0.0      # the weighted sums of the image gradients (arrays once added to)
    style_diff = 0.0
    for layer in content_targets:
        # === STUDENT BEGIN: loop_content ===
        # hint: eqs. 3.10-3.11 at this layer: the loss (into content_loss[layer]) and its
        # hint: gradient to the layer's features; back-propagate that gradient to the image
        # hint: (vgg.backward) and add it, times content_weights[layer], to content_diff
        current = features[layer]
        content_loss[layer] = content_loss_layer.forward(current, content_targets[layer])
        dloss = content_loss_layer.backward(current, content_targets[layer])
        content_diff += content_weights[layer] * vgg.backward(dloss, layer)
        # === STUDENT END ===
    for layer in style_targets:
        # === STUDENT BEGIN: loop_style ===
        # hint: eqs. 3.12-3.15 at this layer, with this layer's own style_loss_layers[layer]:
        # hint: the loss (into style_loss[layer]), its gradient, back-propagated to the
        # hint: image and added, times style_weights[layer], to style_diff
        current = features[layer]
        style_loss[layer] = style_loss_layers[layer].forward(current, style_targets[layer])
        dloss = style_loss_layers[layer].backward(current, style_targets[layer])
        style_diff += style_weights[layer] * vgg.backward(dloss, layer)
        # === STUDENT END ===
    total_loss = (alpha * sum(content_weights[l] * content_loss[l] for l in content_targets)
                  + beta * sum(style_weights[l] * style_loss[l] for l in style_targets))
    image_diff = alpha * content_diff + beta * style_diff
    return float(total_loss), image_diff, {"content": content_loss, "style": style_loss}


def style_transfer(loss_fn, image, steps, lr=1.0, optimizer=None, on_step=None):
    """The transfer loop: ``steps`` Adam updates of ``image`` (eq. 3.17) down the loss.

    ``loss_fn(image) -> (total_loss, image_diff)``: the loss to minimise and its gradient
    (``transfer_loss`` with the targets fixed). ``optimizer``: the AdamOptimizer to use
    (None: a new one with learning rate ``lr``; pass one to continue a run).
    ``on_step(step, image, total_loss)`` (optional) runs after each step: the step number
    (from 1), the updated image and the loss of the image before that update.
    Returns the final image.
    """
    adam = optimizer if optimizer is not None else AdamOptimizer(lr, np.shape(image))
    for step in range(1, steps + 1):
        total_loss, image_diff = loss_fn(image)
        # === STUDENT BEGIN: loop_adam ===
        # hint: eq. 3.17: one Adam step of the image along image_diff
        image = adam.update(image, image_diff)
        # === STUDENT END ===
        if on_step is not None:
            on_step(step, image, total_loss)
    return image
