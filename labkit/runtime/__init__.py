"""The runtime: what student code, the drivers and the public tests need. Ships in the kit.

Who uses it: ``stu_upload/*.py``, ``main_exp_3_*.py``, ``tests/``, and the engine and staff
packages. What it may import: NumPy, SciPy, Pillow, tqdm and, inside functions only, the
student's ``stu_upload`` package; never ``labkit.engine`` or ``labkit.staff``. It holds no
working answer to any graded task (no convolution, img2col, pooling, softmax or Gram-loss
gradient): the student kit is built from this folder as it is.
"""
