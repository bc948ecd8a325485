"""Alias of ``labkit.runtime.calibrate`` (``python -m labkit.calibrate`` keeps working)."""
import sys

from labkit.runtime.calibrate import *  # noqa: F401,F403
from labkit.runtime.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
