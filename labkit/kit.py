"""Alias of ``labkit.staff.kit`` (the command ``python -m labkit.kit`` keeps working)."""
import sys

from labkit.staff.kit import *  # noqa: F401,F403
from labkit.staff.kit import main

if __name__ == "__main__":
    sys.exit(main())
