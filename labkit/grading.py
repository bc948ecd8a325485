"""Alias of ``labkit.staff.grading`` (the command ``python -m labkit.grading`` keeps working)."""
import sys

from labkit.staff.grading import *  # noqa: F401,F403
from labkit.staff.grading import main

if __name__ == "__main__":
    sys.exit(main())
