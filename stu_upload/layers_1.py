"""The original kit's name for layer_1.py (labkit: alias of stu_upload.layer_1); not a student file.

The original drivers import ``stu_upload.layers_1``; this kit keeps the code in layer_1.py.
"""
from stu_upload.layer_1 import *  # noqa: F401,F403
