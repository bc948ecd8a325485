"""Process-wide speed settings (not a student file).

Large NumPy temporaries (img2col buffers, Winograd tiles) are allocated and freed on every
layer call. glibc serves blocks above 128 KiB-32 MiB with fresh mmap()s, so every call pays
page faults again (measured up to 1.7x on one layer). Raising the mmap and trim thresholds
keeps freed blocks in the heap for reuse: the "reuse buffers across calls" of a hand-tuned
library, without changing any code.
"""
import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def reuse_large_allocations(limit_bytes=1 << 30):
    """Ask glibc to reuse freed blocks up to ``limit_bytes`` instead of unmapping them.
    Returns True when applied (Linux/glibc), False elsewhere; safe to call repeatedly."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(limit_bytes)) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, int(2 * limit_bytes)) == 1
    except (OSError, AttributeError):
        return False
    _done = bool(ok)
    return _done
