"""The sandboxed driver server: starts the drivers that tests run (``python main_exp_3_x.py
...``) as forks of one Python that has imported NumPy, SciPy and Pillow already, so a driver
costs its own work, not half a second of start-up (98 drivers in a full grade).

Runs in the sandbox like the drivers themselves (same uid, limits, mounts and environment);
it never imports the submission. Requests arrive on the socket in ``LABKIT_ZYGOTE_FD``: a
JSON ``{"argv": [driver, args...], "cwd": ..., "env": {...}}`` with four file descriptors
(the driver's stdin, stdout, stderr, and its status socket). The fork becomes the driver
as ``python driver args`` would: its own session, those descriptors as 0, 1 and 2, the
folder, environment, ``sys.argv`` and ``sys.path[0]``, the script run as ``__main__``, the
exit code Python would give. It says ``S`` on its status socket as it starts (the kernel
attaches its process id for the grader); this server writes ``X`` and the wait status there
when it ends. Nothing here is trusted by the grader beyond the process id the kernel gives.
"""
import json
import os
import select
import signal
import socket
import struct
import sys

PRELOAD = ("numpy", "scipy", "scipy.io", "scipy.ndimage", "PIL.Image")


def preload():
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def _script_frames(tb, path):
    """The traceback from the driver's own frame on (as Python prints a script's)."""
    start = tb
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == path:
            return tb
        tb = tb.tb_next
    return start


def run_driver(path):
    """Run ``path`` as ``__main__``; the exit code Python would give."""
    import runpy
    import traceback
    try:
        runpy.run_path(path, run_name="__main__")
        return 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xFF
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        traceback.print_exception(type(exc), exc, _script_frames(exc.__traceback__, path))
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, _script_frames(exc.__traceback__, path))
        return 1


def child(req, fds, closing):
    """In the fork: become the driver; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        closing[0].close()                  # the server's socket and wake-up pipe
        for fd in closing[1:]:
            os.close(fd)
        os.setsid()
        for i, fd in enumerate(fds[:3]):
            if fd != i:
                os.dup2(fd, i)
        for fd in set(fds[:3]):
            if fd > 2:
                os.close(fd)
        os.write(fds[3], b"S")              # hello: the kernel adds this process's id
        os.close(fds[3])
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        path = os.path.abspath(req["argv"][0])
        sys.argv = [path] + list(req["argv"][1:])
        sys.path[0] = os.path.dirname(path)
        code = run_driver(path)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            import threading
            threading._shutdown()
        except BaseException:
            pass
        try:
            import atexit
            atexit._run_exitfuncs()
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def main():
    ctl = socket.socket(fileno=int(os.environ.pop("LABKIT_ZYGOTE_FD")))
    os.chdir(os.environ.get("HOME", "."))
    preload()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    children = {}                           # pid -> its status socket's descriptor
    ctl.send(b"ready")
    while True:
        try:
            ready, _, _ = select.select([ctl, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        while children:                     # reap: the driver's wait status to its socket
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            fd = children.pop(pid, None)
            if fd is not None:
                try:
                    os.write(fd, b"X" + struct.pack("<i", status))
                except OSError:
                    pass
                os.close(fd)
        if ctl not in ready:
            continue
        msg, fds, _, _ = socket.recv_fds(ctl, 1 << 20, 4)
        if not msg:
            return                          # the grader closed its end
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            continue
        try:
            req = json.loads(msg.decode("utf-8"))
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except Exception as exc:            # (a fork refused at the process limit)
            try:
                os.write(fds[3], b"E" + str(exc)[:200].encode("utf-8", "replace"))
            except OSError:
                pass
            for fd in fds:
                os.close(fd)
            continue
        if pid == 0:
            child(req, fds, [ctl, wake_r, wake_w])
        for fd in fds[:3]:
            os.close(fd)
        children[pid] = fds[3]


if __name__ == "__main__":
    main()
