"""labkit/runtime/forkserver.py (issue 22): drivers that tests start run as forks of a
server that imported NumPy, SciPy and Pillow once (a hundred drivers in the kit's suite and
in a full grade, each half a second of start-up before). In the kit it runs unsandboxed; the
grader starts it inside the sandbox. Either way a fork must behave as ``python driver args``
would: its arguments, folder, environment, streams and exit code, a signal's death, a
traceback that starts at the driver; it starts from the server's clean state (what one
driver changes no later one sees); a server that died is started again."""
import json
import os
import signal
import struct
import subprocess
import sys

import pytest

from labkit.staff.grading import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                                reason="Linux, as root (the grader's setting)")


class Here:
    """The kit's server: this Python, unsandboxed, scripts in a test folder."""

    def __init__(self, folder):
        from labkit.runtime.forkserver import ForkServer
        self.srv, self.folder, self.uid = ForkServer(), str(folder), None

    def env(self):
        return dict(os.environ)

    def kill_all(self):
        self.srv.close()

    def close(self):
        self.srv.close()


class InSandbox:
    """The grader's: started in a submission's sandbox, scripts in its work folder."""

    def __init__(self, folder):
        from labkit.staff.sandbox.client import Session
        from labkit.staff.sandbox.drivers import _driver_server
        self.session = Session(os.path.join(ROOT, "stu_upload"))
        sb = self.session.sandbox
        self.srv, self.folder, self.uid = _driver_server(sb), sb.scratch.work, sb.uid

    def env(self):
        return self.session.sandbox.env()

    def kill_all(self):                 # as after a worker killed for a time limit
        self.session.sandbox.kill_stragglers()
        self.srv.proc.wait(timeout=10)

    def close(self):
        self.srv.close()
        self.session.close()


@pytest.fixture(params=[Here, InSandbox], ids=["kit", "sandbox"])
def server(request, tmp_path):
    s = request.param(tmp_path)
    yield s
    s.close()


def run(server, code, args=(), signal_after=None):
    """Run ``code`` as a driver script: (exit code as Popen gives it, stdout, stderr)."""
    path = os.path.join(server.folder, f"drv{len(os.listdir(server.folder))}.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    os.chmod(path, 0o644)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        pid, status = server.srv.spawn([path, *args], server.folder, server.env(),
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
    return os.waitstatus_to_exitcode(struct.unpack("<i", data[1:])[0]), out, err


def test_a_fork_is_the_driver_python_would_run(server):
    code, out, err = run(server, (
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'path0': sys.path[0],\n"
        "                  'home': os.environ.get('HOME'), 'name': __name__,\n"
        "                  'sid': os.getsid(0) == os.getpid(), 'uid': os.getuid()}))\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)\n"), args=("--flag", "x y"))
    info = json.loads(out)
    assert code == 3 and err == "to stderr\n"
    assert info["argv"][1:] == ["--flag", "x y"] and info["argv"][0].endswith(".py")
    assert info["cwd"] == server.folder and info["path0"] == server.folder
    assert info["home"] == server.env()["HOME"] and info["name"] == "__main__"
    assert info["sid"]
    if server.uid is not None:
        assert info["uid"] == server.uid


def test_an_uncaught_exception_exits_1_with_the_drivers_traceback(server):
    code, out, err = run(server, "def f():\n    raise ValueError('bad input')\nf()\n")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "drv" in lines[1] and "runpy" not in err and "zygote" not in err, err
    assert lines[-1] == "ValueError: bad input"


def test_a_signal_reaches_the_driver_and_its_death_is_reported(server):
    code, _, _ = run(server, "import time\nprint('up', flush=True)\ntime.sleep(30)\n",
                        signal_after=0.5)
    assert code == -signal.SIGTERM
    code, out, _ = run(server, (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('saved'), sys.exit(0)))\n"
        "time.sleep(30)\n"), signal_after=0.5)
    assert code == 0 and out == "saved\n"


def test_each_driver_starts_from_the_servers_clean_state(server):
    """What a driver changes in modules the server imported (NumPy here) is gone for the
    next one; and the server itself never ran it (it starts the next as before)."""
    code, _, _ = run(server, "import numpy\nnumpy.LEFT_BY_A_DRIVER = 1\n")
    assert code == 0
    code, out, _ = run(server, "import numpy, sys\n"
                                  "print(hasattr(numpy, 'LEFT_BY_A_DRIVER'),\n"
                                  "      'numpy' in sys.modules)\n")
    assert (code, out) == (0, "False True\n")


def test_a_driver_holds_only_its_own_streams(server):
    """While another driver runs, a new one holds no descriptor but 0, 1 and 2: not the
    server's socket, nor the other driver's status socket (red team: it could write the
    other's exit status)."""
    path = os.path.join(server.folder, "sleeper.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write("import time\ntime.sleep(60)\n")
    os.chmod(path, 0o644)
    null = os.open(os.devnull, os.O_RDWR)
    try:
        pid, status = server.srv.spawn([path], server.folder, server.env(), [null] * 3)
    finally:
        os.close(null)
    try:
        code, out, _ = run(server, "import os\n"
                                   "fds = [int(n) for n in os.listdir('/proc/self/fd')]\n"
                                   "print(sorted(fd for fd in fds if os.path.exists(\n"
                                   "    f'/proc/self/fd/{fd}')))\n")
        assert (code, out) == (0, "[0, 1, 2]\n")
    finally:
        os.kill(pid, signal.SIGKILL)
        status.close()


def test_a_server_that_died_is_started_again(server):
    assert run(server, "pass\n")[0] == 0
    first = server.srv.proc.pid
    server.kill_all()
    assert run(server, "print('again')\n")[:2] == (0, "again\n")
    assert server.srv.proc.pid != first


# ------------------------------------------------------------------- subprocess.Popen
def test_install_forks_a_listed_driver_as_a_fresh_python_would_run(tmp_path, monkeypatch):
    """``install``: ``[sys.executable, driver]`` is a fork of a server started with the
    driver's start-up variables (PYTHONPATH with a sitecustomize, a thread count): its
    output equals a fresh Python's (sys.path, what sitecustomize did, the environment);
    another script starts a fresh Python; a timeout kills it; terminate reaches it."""
    from labkit.runtime import forkserver
    plain = forkserver.plain_popen()
    monkeypatch.setattr(subprocess, "Popen", plain)                 # undone after the test
    spawned = []
    real_spawn = forkserver.ForkServer.spawn
    monkeypatch.setattr(forkserver.ForkServer, "spawn",
                        lambda self, argv, *a, **k: spawned.append(argv[1:]) or
                        real_spawn(self, argv, *a, **k))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import builtins\nbuiltins.SITE_MARK = 'kit'\n")
    drv, other = tmp_path / "main_x.py", tmp_path / "other.py"
    code = ("import builtins, json, os, sys\n"
            "print(json.dumps([sys.argv[1:], sys.path, getattr(builtins, 'SITE_MARK', None),\n"
            "                  os.environ.get('OMP_NUM_THREADS')]))\n")
    for p in (drv, other):
        p.write_text(code)
    servers = forkserver.install([str(drv)])
    try:
        for i, env in enumerate((None, {**os.environ, "PYTHONPATH": str(site)},
                                 {**os.environ, "OMP_NUM_THREADS": "7"})):
            argv = [sys.executable, str(drv), f"run{i}"]
            forked = subprocess.run(argv, capture_output=True, text=True, env=env,
                                    cwd=str(tmp_path))
            fresh = plain(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=str(tmp_path))
            out, err = fresh.communicate(timeout=60)
            assert (forked.returncode, forked.stdout, forked.stderr) == (0, out, err), env
        assert [json_arg[0] for json_arg in spawned] == ["run0", "run1", "run2"]
        assert len(servers) == 3                   # one per set of start-up variables
        out = subprocess.run([sys.executable, str(other), "x"], capture_output=True, text=True)
        assert out.returncode == 0 and len(spawned) == 3        # not a driver: not forked
        drv.write_text("import sys, time\nprint(sys.argv[1:], flush=True)\ntime.sleep(60)\n")
        with pytest.raises(subprocess.TimeoutExpired):          # killed, then waited for
            subprocess.run([sys.executable, str(drv), "f"], capture_output=True, timeout=2)
        p = subprocess.Popen([sys.executable, str(drv), "g"], stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"['g']\n"
        p.terminate()
        assert p.wait(timeout=30) == -signal.SIGTERM and len(spawned) == 5
        p.stdout.close()
    finally:
        for server in (servers or {}).values():
            server.close()


def test_a_server_that_cannot_start_costs_the_kit_nothing_and_the_grader_its_driver(
        tmp_path, monkeypatch):
    """Where the server cannot work (a system without SCM_CREDENTIALS, say), a kit's driver
    runs as a fresh Python; a sandboxed driver fails with the error and never runs outside
    the sandbox (no fresh Python as root in its place)."""
    from labkit.runtime import forkserver
    from labkit.staff.sandbox.client import Session
    from labkit.staff.sandbox.drivers import _sandbox_drivers

    def broken(self, *a, **k):
        raise OSError("no fork server here")
    monkeypatch.setattr(forkserver.ForkServer, "spawn", broken)
    monkeypatch.setattr(subprocess, "Popen", forkserver.plain_popen())
    drv = tmp_path / "main_x.py"
    drv.write_text("import os\nprint(os.getuid())\n")
    forkserver.install([str(drv)])
    out = subprocess.run([sys.executable, str(drv)], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, f"{os.getuid()}\n")
    driver = os.path.join(ROOT, "main_exp_3_1.py")
    s = Session(os.path.join(ROOT, "stu_upload"))
    try:
        _sandbox_drivers(s)
        with pytest.raises(OSError, match="no fork server here"):
            subprocess.run([sys.executable, driver, "--help"], capture_output=True,
                           cwd=s.sandbox.scratch.tmp, timeout=120)
    finally:
        s.close()


def test_the_grader_never_runs_a_driver_on_the_kits_server(tmp_path, monkeypatch):
    """A kit's conftest may install its (unsandboxed) fork server before the grading
    plugin installs the sandbox's: a driver a test starts still runs in the sandbox, as
    the sandbox uid (without unwrapping the kit's Popen the kit's server ran it as root)."""
    from labkit.runtime import forkserver
    from labkit.staff.sandbox.client import Session
    from labkit.staff.sandbox.drivers import _sandbox_drivers
    monkeypatch.setattr(subprocess, "Popen", forkserver.plain_popen())
    driver = os.path.join(ROOT, "main_exp_3_1.py")
    kit = forkserver.install([driver])
    assert kit == {}
    s = Session(os.path.join(ROOT, "stu_upload"))
    try:
        _sandbox_drivers(s)
        out = subprocess.run([sys.executable, driver, "--help"], capture_output=True,
                             text=True, cwd=s.sandbox.scratch.tmp, timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout.lower()
        assert kit == {}                        # the kit's server never started
        if s.sandbox.uid is not None:
            assert s.driver_server.proc is not None
    finally:
        s.close()
