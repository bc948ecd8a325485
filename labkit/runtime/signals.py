"""Stopping a long run cleanly (not a student file): Ctrl-C and SIGTERM become
KeyboardInterrupt outside the moments when files are written (``critical()``), so the
driver can save the image, the log and the checkpoint, and no file is left half-written.
"""
import signal
import sys
from contextlib import contextmanager


class StopSignals:
    """Ctrl-C and SIGTERM both stop the run as KeyboardInterrupt (the driver then saves
    the image, log and checkpoint); inside ``critical()`` (writing files) the stop waits
    until the block ends, so no file is left half-written. ``signum`` is the last signal."""

    def __init__(self):
        self.signum = None
        self.depth = 0
        self.pending = False
        self.old = {}

    def _handler(self, signum, frame):
        self.signum = signum
        if self.depth:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handler)
        except ValueError:        # not the main thread: leave the handlers alone
            self.old = {}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False

    @contextmanager
    def critical(self, drop=False):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0 and self.pending:
                self.pending = False
                if not drop:
                    raise KeyboardInterrupt




def exit_code_of_stop(guard):
    """After a KeyboardInterrupt: SIGTERM exits 143 (with a line saying what was saved);
    Ctrl-C re-raises (run_main exits 130)."""
    if guard.signum == signal.SIGTERM:
        print("terminated (SIGTERM); the current image, log and checkpoint are saved.",
              file=sys.stderr)
        sys.exit(143)
    raise KeyboardInterrupt
