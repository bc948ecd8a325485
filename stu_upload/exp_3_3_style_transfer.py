"""The original kit's name for style_transfer.py (labkit: alias of stu_upload.style_transfer);
not a student file.

The original exp 3.3 driver imports ``VGG19``, ``AdamOptimizer`` and ``get_random_img`` from
``stu_upload.exp_3_3_style_transfer``; this kit keeps Adam in layer_3.py.
"""
from stu_upload.layer_3 import AdamOptimizer  # noqa: F401
from stu_upload.style_transfer import *  # noqa: F401,F403
