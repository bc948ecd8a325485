"""labkit/staff/sandbox/process.py: the sandbox mode is chosen honestly. ``auto`` grades only
in bubblewrap, verified by making namespaces; where that fails it refuses to grade (a loud
error naming the explicit, weaker ``--sandbox uid``) instead of falling back silently."""
import pytest

from labkit.staff.sandbox import process


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setattr(process, "_MODE_CACHE", {})


def test_auto_refuses_when_no_sandbox_works(monkeypatch, no_cache):
    monkeypatch.setattr(process, "_bwrap_works", lambda: False)
    monkeypatch.setattr(process, "_uid_works", lambda: False)
    monkeypatch.setattr(process.os, "geteuid", lambda: 0)
    with pytest.raises(process.SandboxError, match="no sandbox verified: bubblewrap"):
        process.detect_mode("auto")
    with pytest.raises(process.SandboxError, match="--sandbox=uid: an unprivileged user"):
        process.detect_mode("uid")
    assert process.detect_mode("none") == "none"          # asked for explicitly


def test_auto_takes_bwrap_and_never_falls_back(monkeypatch, no_cache):
    monkeypatch.setattr(process.os, "geteuid", lambda: 0)
    monkeypatch.setattr(process, "_uid_works", lambda: True)
    monkeypatch.setattr(process, "_bwrap_works", lambda: True)
    assert process.detect_mode("auto") == "bwrap"
    monkeypatch.setattr(process, "_MODE_CACHE", {})
    monkeypatch.setattr(process, "_bwrap_works", lambda: False)
    with pytest.raises(process.SandboxError, match="cannot create namespaces.*'--sandbox uid'"):
        process.detect_mode("auto")
    assert process.detect_mode("uid") == "uid"
