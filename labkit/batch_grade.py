"""Alias of ``labkit.staff.batch_grade`` (the command ``python -m labkit.batch_grade`` keeps working)."""
import sys

from labkit.staff.batch_grade import *  # noqa: F401,F403
from labkit.staff.batch_grade import main

if __name__ == "__main__":
    sys.exit(main())
