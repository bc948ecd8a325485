"""Course staff tools: the student-kit generator, the grading plugin and batch grading.
Never shipped in the student kit.

What it may import: ``labkit.runtime`` and ``labkit.engine``.
"""
