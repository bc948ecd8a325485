"""The original kit's name for layer_2.py (labkit: alias of stu_upload.layer_2); not a student file.

The original drivers import ``stu_upload.layers_2``; this kit keeps the code in layer_2.py.
"""
from stu_upload.layer_2 import *  # noqa: F401,F403
