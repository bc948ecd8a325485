"""Recorded expected values for the public tests (read-only data access).

The public tests compare the student's layers with values recorded from the course's
reference solution, not with reference code (the student kit holds no working answer).
``tests/data/<name>.npz`` holds, for each case, its inputs and expected outputs under keys
``"<case>/<field>"``; staff write it with ``python -m labkit.staff.record``.

    rec = Recorded("layer_2")
    for case in rec.cases("conv/"):          # e.g. "conv/N1_C2-3_5x5_K3_p1_s1"
        data = rec[case]                     # {"x": ..., "w": ..., "y": ...}
"""
import os

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tests", "data")


class RecordedDataError(RuntimeError):
    """The recorded data file is missing or lacks a case."""


class Recorded:
    """The recorded cases of one test module (``tests/data/<name>.npz``)."""

    def __init__(self, name, folder=DATA_DIR):
        self.path = os.path.join(folder, f"{name}.npz")
        if not os.path.isfile(self.path):
            raise RecordedDataError(f"recorded test data {self.path} is missing; staff "
                                    f"rebuild it with 'python -m labkit.staff.record'.")
        with np.load(self.path, allow_pickle=False) as data:
            self._arrays = {key: data[key] for key in data.files}

    def cases(self, prefix=""):
        """Sorted case names (the part before the last '/') that start with ``prefix``."""
        return sorted({key.rsplit("/", 1)[0] for key in self._arrays if key.startswith(prefix)})

    def __getitem__(self, case):
        fields = {key.rsplit("/", 1)[1]: value.copy() for key, value in self._arrays.items()
                  if key.rsplit("/", 1)[0] == case}
        if not fields:
            raise RecordedDataError(f"{self.path} has no case '{case}'; rebuild it with "
                                    f"'python -m labkit.staff.record'.")
        return fields
