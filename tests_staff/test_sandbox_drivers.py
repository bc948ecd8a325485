"""Drivers that tests start run as forks of the sandbox's driver server (issue 22: 98
drivers in a full grade, each half a second of Python and NumPy start-up before). A fork
must behave as ``python driver args`` would: its arguments, folder, environment, streams
and exit code, a signal's death, a traceback that starts at the driver; it starts from the
server's clean state (what one driver changes no later one sees); a server that died is
started again."""
import json
import os
import signal
import struct
import sys

import pytest

from labkit.staff.grading import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                                reason="Linux, as root (the grader's setting)")


@pytest.fixture
def server():
    from labkit.staff.sandbox.client import Session
    from labkit.staff.sandbox.drivers import DriverServer
    s = Session(os.path.join(ROOT, "stu_upload"))
    srv = DriverServer(s.sandbox)
    yield srv
    srv.close()
    s.close()


def run(server, code, args=(), cwd=None, signal_after=None):
    """Run ``code`` as a driver script: (exit code as Popen gives it, stdout, stderr, pid)."""
    sb = server.sandbox
    path = os.path.join(sb.scratch.work, f"drv{len(os.listdir(sb.scratch.work))}.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    os.chmod(path, 0o644)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        pid, status = server.spawn([path, *args], cwd or sb.scratch.work, sb.env(),
                                   [null, out_w, err_w])
    finally:
        for fd in (null, out_w, err_w):
            os.close(fd)
    if signal_after is not None:
        import time
        time.sleep(signal_after)
        os.kill(pid, signal.SIGTERM)
    with os.fdopen(out_r, "rb") as f:
        out = f.read().decode()
    with os.fdopen(err_r, "rb") as f:
        err = f.read().decode()
    data = status.recv(16)
    status.close()
    assert data[:1] == b"X" and len(data) == 5, data
    return os.waitstatus_to_exitcode(struct.unpack("<i", data[1:])[0]), out, err, pid


def test_a_fork_is_the_driver_python_would_run(server):
    sb = server.sandbox
    code, out, err, _ = run(server, (
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'path0': sys.path[0],\n"
        "                  'home': os.environ.get('HOME'), 'name': __name__,\n"
        "                  'sid': os.getsid(0) == os.getpid(), 'uid': os.getuid()}))\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)\n"), args=("--flag", "x y"))
    info = json.loads(out)
    assert code == 3 and err == "to stderr\n"
    assert info["argv"][1:] == ["--flag", "x y"] and info["argv"][0].endswith(".py")
    assert info["cwd"] == sb.scratch.work and info["path0"] == sb.scratch.work
    assert info["home"] == sb.scratch.work and info["name"] == "__main__" and info["sid"]
    if sb.uid is not None:
        assert info["uid"] == sb.uid


def test_an_uncaught_exception_exits_1_with_the_drivers_traceback(server):
    code, out, err, _ = run(server, "def f():\n    raise ValueError('bad input')\nf()\n")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "drv" in lines[1] and "runpy" not in err and "zygote" not in err, err
    assert lines[-1] == "ValueError: bad input"


def test_a_signal_reaches_the_driver_and_its_death_is_reported(server):
    code, _, _, _ = run(server, "import time\nprint('up', flush=True)\ntime.sleep(30)\n",
                        signal_after=0.5)
    assert code == -signal.SIGTERM
    code, out, _, _ = run(server, (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('saved'), sys.exit(0)))\n"
        "time.sleep(30)\n"), signal_after=0.5)
    assert code == 0 and out == "saved\n"


def test_each_driver_starts_from_the_servers_clean_state(server):
    """What a driver changes in modules the server imported (NumPy here) is gone for the
    next one; and the server itself never ran it (it starts the next as before)."""
    code, _, _, _ = run(server, "import numpy\nnumpy.LEFT_BY_A_DRIVER = 1\n")
    assert code == 0
    code, out, _, _ = run(server, "import numpy, sys\n"
                                  "print(hasattr(numpy, 'LEFT_BY_A_DRIVER'),\n"
                                  "      'numpy' in sys.modules)\n")
    assert (code, out) == (0, "False True\n")


def test_a_server_that_died_is_started_again(server):
    assert run(server, "pass\n")[0] == 0
    first = server.proc.pid
    server.sandbox.kill_stragglers()            # as after a worker killed for a time limit
    server.proc.wait(timeout=10)
    assert run(server, "print('again')\n")[:2] == (0, "again\n")
    assert server.proc.pid != first
