"""Process-wide speed settings (not a student file).

Large NumPy temporaries (img2col buffers, Winograd tiles) are allocated and freed on every
layer call. glibc serves blocks above 128 KiB-32 MiB with fresh mmap()s, so every call pays
page faults again (measured up to 1.7x on one layer). Raising the mmap and trim thresholds
keeps freed blocks in the heap for reuse: the "reuse buffers across calls" of a hand-tuned
library, without changing any code.

``engine_threads()``: the tuned engine's own parallelism. OpenBLAS's threads and ours must not
compete (measured: alternating between them is slower than either), so inside
``with engine_threads():`` OpenBLAS is single-threaded and ``labkit`` splits the work over a
pool of Python threads instead (NumPy releases the GIL in copies and matrix products):
Winograd by ranges of tile rows (or of output channels on small maps), img2col GEMMs by
pixel or output-channel ranges, pooling by rows, the style losses one layer per thread.
Outside that block everything runs on the main thread as before. Where NumPy's OpenBLAS
cannot be found (another BLAS), there is no pool. ``LABKIT_THREADS=1`` turns the
pool off; ``LABKIT_THREADS=4`` asks for 4 workers (default: one per usable CPU). Measured on
2 cores only; on a larger machine compare with ``LABKIT_THREADS=1`` (OpenBLAS's threads).
"""
import ctypes
import ctypes.util
import glob
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

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


class WorkerPool:
    """``workers`` threads; ``submit(fn, *args)`` returns a Future. The task runs under the
    submitting thread's NumPy error settings (``np.errstate`` is per thread)."""

    def __init__(self, workers):
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="labkit")

    def submit(self, fn, *args):
        import numpy as np
        settings = np.geterr()

        def task():
            with np.errstate(**settings):
                return fn(*args)
        return self._executor.submit(task)


_POOL = {"made": False, "pool": None}
_BLAS = {}


def _openblas():
    """(get_num_threads, set_num_threads) of NumPy's bundled OpenBLAS, or None."""
    if "fns" not in _BLAS:
        _BLAS["fns"] = None
        import numpy as np
        base = os.path.dirname(os.path.dirname(np.__file__))
        paths = sorted(glob.glob(os.path.join(base, "numpy.libs", "*openblas*"))
                       + glob.glob(os.path.join(base, "numpy", ".dylibs", "*openblas*")))
        names = [("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                 ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                 ("openblas_get_num_threads", "openblas_set_num_threads")]
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for get_name, set_name in names:
                get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
                if get is not None and set_ is not None:
                    get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                    _BLAS["fns"] = (get, set_)
                    return _BLAS["fns"]
    return _BLAS["fns"]


@contextmanager
def blas_threads(n):
    """OpenBLAS uses ``n`` threads inside the block (a no-op without NumPy's OpenBLAS)."""
    fns = _openblas()
    previous = fns[0]() if fns else n
    if previous != n:
        fns[1](n)
    try:
        yield
    finally:
        if previous != n:
            fns[1](previous)


def usable_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_pool():
    """The shared WorkerPool (made on first use), or None: one CPU, ``LABKIT_THREADS=1``,
    or no control over the BLAS threads."""
    if not _POOL["made"]:
        _POOL["made"] = True
        env = os.environ.get("LABKIT_THREADS", "").strip()
        try:
            workers = int(env) if env else usable_cpus()
        except ValueError:
            raise ValueError(f"LABKIT_THREADS must be a whole number, got {env!r}") from None
        if workers > 1 and _openblas() is not None:
            _POOL["pool"] = WorkerPool(workers)
    return _POOL["pool"]


@contextmanager
def engine_threads(enabled=True):
    """Inside the block: OpenBLAS single-threaded, ``active_pool()`` returns the pool
    (``enabled=False``, or no pool: the block runs as it is)."""
    if not enabled or worker_pool() is None:
        yield
        return
    with blas_threads(1):
        _POOL["depth"] = _POOL.get("depth", 0) + 1
        try:
            yield
        finally:
            _POOL["depth"] -= 1


def active_pool():
    """The pool inside ``engine_threads()``, else None; None on the pool's own threads too
    (a worker waiting for work queued behind itself would never finish)."""
    if not _POOL.get("depth") or threading.current_thread().name.startswith("labkit"):
        return None
    return _POOL["pool"]


def split_ranges(size, parts):
    """[(lo, hi), ...]: ``size`` split into ``parts`` nearly equal, non-empty ranges."""
    parts = max(1, min(parts, size))
    edges = [size * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def run_split(pool, fn, size):
    """fn(lo, hi) over ranges covering 0..size: all at once without a pool, else one range
    per worker of ``pool`` (``labkit.engine.perf.WorkerPool``): the first on the calling thread,
    the others on the pool; returns when all are done."""
    if pool is None or size < 2:
        fn(0, size)
        return
    first, *rest = split_ranges(size, pool.workers)
    futures = [pool.submit(fn, lo, hi) for lo, hi in rest]
    try:
        fn(*first)
    finally:
        for future in futures:
            future.result()


def by_channels(fn, channels):
    """fn(slice of channels) over channel ranges covering 0..channels: on the pool inside
    ``engine_threads()`` (the ranges are independent), else one call with slice(None)."""
    pool = active_pool()
    if pool is None:
        fn(slice(None))
    else:
        run_split(pool, lambda lo, hi: fn(slice(lo, hi)), channels)
