"""The speed engine: fast convolutions (tuned img2col, Winograd F(2x2)/F(4x4), FFT), the
per-layer choice, the tuned style losses (``losses``), the cost model (``costs``), the
thread pool and the allocator setting, and ``attach`` which swaps
engine-backed layers into a built student network. Not shipped in the student kit.

Who uses it: the drivers (``main_exp_3_3.py --conv auto``, ``main_exp_3_1.py --layers
tuned``), the benchmarks, staff tests. What it may import: ``labkit.runtime`` and NumPy/SciPy;
never ``labkit.staff``; never the student's files (it works on the layer objects it is given).
"""
