"""The VGG19 architecture as MatConvNet's ``imagenet-vgg-verydeep-19.mat`` stores it.

43 layers (zero-based index, name, type); the lab's networks add a ``flatten`` after pool5.
Channel widths are the real ones; the test fixtures divide them by a factor.
"""

# (name, type, cout) for the 43 layers of the file; cout is None for relu/pool/softmax
_BLOCKS = [(1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512)]


def _layer_list():
    layers = []
    for block, n_conv, width in _BLOCKS:
        for i in range(1, n_conv + 1):
            layers.append((f"conv{block}_{i}", "conv", width))
            layers.append((f"relu{block}_{i}", "relu", None))
        layers.append((f"pool{block}", "pool", None))
    layers += [("fc6", "conv", 4096), ("relu6", "relu", None), ("fc7", "conv", 4096),
               ("relu7", "relu", None), ("fc8", "conv", 1000), ("prob", "softmax", None)]
    return layers


FILE_LAYERS = _layer_list()                       # 43 entries
FILE_LAYER_NAMES = [name for name, _, _ in FILE_LAYERS]
CONV_NAMES = [name for name, kind, _ in FILE_LAYERS if kind == "conv"]   # 19 incl. fc6-8
FEATURE_CONV_NAMES = CONV_NAMES[:16]

# Exp 3.3's feature network: the file's layers up to pool5 (no fc layers).
FEATURE_LAYER_NAMES = FILE_LAYER_NAMES[:37]      # conv1_1 ... pool5

# The lab's 44-name list (original vgg_cpu.py): flatten after pool5, softmax called "softmax".
LAB_LAYER_NAMES = FILE_LAYER_NAMES[:37] + ["flatten"] + FILE_LAYER_NAMES[37:42] + ["softmax"]

IMAGE_SIZE = 224
POOL5_SIZE = 7

# Real file facts (README "Getting the real weights").
REAL_FILE_NAME = "imagenet-vgg-verydeep-19.mat"
LEGACY_URL = ("https://www.vlfeat.org/matconvnet/models/beta16/"
              "imagenet-vgg-verydeep-19.mat")
META_URL = "https://www.vlfeat.org/matconvnet/models/imagenet-vgg-verydeep-19.mat"
LEGACY_MD5 = "8ee3263992981a1d26e73b3ca028a123"
LEGACY_SIZE_TEXT = "about 576 MB (legacy/beta16 file)"
META_SIZE_BYTES = 534_904_783
