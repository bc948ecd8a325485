"""The original kit's name for layer_3.py (labkit: alias of stu_upload.layer_3); not a student file.

The original drivers import ``stu_upload.layers_3``; this kit keeps the code in layer_3.py.
"""
from stu_upload.layer_3 import *  # noqa: F401,F403
