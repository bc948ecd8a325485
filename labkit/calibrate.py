"""Alias of ``labkit.runtime.calibrate`` (``python -m labkit.calibrate`` keeps working)."""
import sys

from labkit.runtime.calibrate import *  # noqa: F401,F403
from labkit.runtime.calibrate import main
from labkit.runtime.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))      # one message and exit 2 for bad input, as the real command
