"""The freed-memory releaser: calls malloc_trim while running, stops when told."""

from __future__ import annotations

import time

from docingest.core import memory


def test_releaser_calls_trim_periodically_and_stops(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(time.monotonic()))
    with memory.FreedMemoryReleaser(interval_s=0.02) as releaser:
        time.sleep(0.2)
    n = len(calls)
    assert n >= 3 and releaser.calls == n
    time.sleep(0.1)
    assert len(calls) == n  # stopped with the block
    assert not releaser._thread.is_alive()


def test_release_freed_memory_calls_glibc_here():
    import platform

    memory.release_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert memory._libc not in (None, False)  # it found malloc_trim and called it
    else:
        assert memory._libc is False  # elsewhere it turns itself off and stays a no-op


def test_interval_zero_starts_no_thread(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(1))
    with memory.FreedMemoryReleaser(interval_s=0) as releaser:
        time.sleep(0.05)
    assert calls == [] and not releaser._thread.is_alive()
