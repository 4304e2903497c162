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


def test_release_freed_memory_runs_here_without_error():
    memory.release_freed_memory()  # glibc here; elsewhere it turns itself off
    assert memory._libc is not None


def test_interval_zero_starts_no_thread(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(1))
    with memory.FreedMemoryReleaser(interval_s=0) as releaser:
        time.sleep(0.05)
    assert calls == [] and not releaser._thread.is_alive()
