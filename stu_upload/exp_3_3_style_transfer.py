"""The original kit's name for style_transfer.py (labkit: alias of stu_upload.style_transfer);
not a student file.

The original exp 3.3 driver star-imports ``stu_upload.exp_3_3_style_transfer`` and uses
``VGG19``, ``AdamOptimizer``, ``get_random_img`` and the loss layers ``ContentLossLayer`` and
``StyleLossLayer`` as bare names (the original module imports every layer class at module
level); this kit keeps Adam and the losses in layer_3.py, so they are re-exported here.
"""
from stu_upload.layer_1 import FullyConnectedLayer, ReLULayer, SoftmaxLossLayer  # noqa: F401
from stu_upload.layer_2 import ConvolutionalLayer, FlattenLayer, MaxPoolingLayer  # noqa: F401
from stu_upload.layer_3 import AdamOptimizer, ContentLossLayer, StyleLossLayer  # noqa: F401
from stu_upload.style_transfer import *  # noqa: F401,F403
