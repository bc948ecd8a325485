"""labkit/staff/sandbox/process.py: the sandbox mode is chosen honestly. Where neither
bubblewrap nor a dropped uid can run the worker, ``auto`` refuses to grade (a loud error)
instead of grading every submission 0 or running student code as root unnoticed."""
import pytest

from labkit.staff.sandbox import process


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setattr(process, "_MODE_CACHE", {})


def test_auto_refuses_when_no_sandbox_works(monkeypatch, no_cache):
    monkeypatch.setattr(process, "_bwrap_works", lambda: False)
    monkeypatch.setattr(process, "_uid_works", lambda: False)
    monkeypatch.setattr(process.os, "geteuid", lambda: 0)
    with pytest.raises(process.SandboxError, match="no sandbox works here: .*bubblewrap"):
        process.detect_mode("auto")
    with pytest.raises(process.SandboxError, match="--sandbox=uid: an unprivileged user"):
        process.detect_mode("uid")
    assert process.detect_mode("none") == "none"          # asked for explicitly


def test_auto_takes_the_strongest_mode_that_works(monkeypatch, no_cache):
    monkeypatch.setattr(process.os, "geteuid", lambda: 0)
    monkeypatch.setattr(process, "_uid_works", lambda: True)
    monkeypatch.setattr(process, "_bwrap_works", lambda: True)
    assert process.detect_mode("auto") == "bwrap"
    monkeypatch.setattr(process, "_MODE_CACHE", {})
    monkeypatch.setattr(process, "_bwrap_works", lambda: False)
    assert process.detect_mode("auto") == "uid"
