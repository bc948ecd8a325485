"""labkit: everything of the chapter-3 lab kit that is not a student file, by audience.

=================  ==========================================================  ==================
package            who uses it                                                 may import
=================  ==========================================================  ==================
labkit.runtime     student code, the drivers, the public tests; ships in the   numpy, scipy, PIL,
                   student kit (.mat reader, images, gradient checking,        tqdm, stu_upload
                   fixtures, style-transfer loop, pycnml simulator, CLI)        (inside functions)
labkit.engine      the tuned convolution engine (img2col / Winograd / FFT,     labkit.runtime
                   threads, allocator) that the drivers attach to a student
                   network from outside; never shipped in the kit
labkit.staff       course staff: kit generator, grading, batch grading;        labkit.runtime,
                   never shipped in the kit                                    labkit.engine
=================  ==========================================================  ==================

Imports run one way: ``labkit.runtime`` imports neither of the others (a test checks it).
The modules directly in ``labkit/`` (``kit``, ``grading``, ``batch_grade``, ``calibrate``) are
aliases that keep the older commands working (``python -m labkit.kit ...``).
"""
