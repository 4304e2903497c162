"""The freed-memory releaser: calls malloc_trim while running, stops when told."""

from __future__ import annotations

import time

from docingest.core import memory


def test_releaser_calls_trim_periodically_and_stops(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(time.monotonic()))
    with memory.FreedMemoryReleaser(interval_s=0.02) as releaser:
        deadline = time.monotonic() + 10  # three calls take ~0.06 s; the margin is for a loaded machine
        while len(calls) < 3:
            assert time.monotonic() < deadline, calls
            time.sleep(0.01)
    assert not releaser._thread.is_alive()  # stopped with the block: no call can follow
    assert len(calls) >= 3 and releaser.calls == len(calls)
    assert all(b > a for a, b in zip(calls, calls[1:], strict=False))


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
        assert not releaser._thread.is_alive()
    assert calls == []


def _limit_in_a_fresh_process(arenas: int, **env: str) -> str:
    """limit_arenas in a process of its own (the cap stays for a process's life): its answer."""
    import os
    import subprocess
    import sys

    code = f"from docingest.core.memory import limit_arenas; print(limit_arenas({arenas}))"
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_limit_arenas_caps_glibc_unless_told_otherwise():
    import platform

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert _limit_in_a_fresh_process(2) == str(glibc)  # mallopt(M_ARENA_MAX) accepted it
    assert _limit_in_a_fresh_process(0) == "False"  # 0: glibc's own default stays
    assert _limit_in_a_fresh_process(2, MALLOC_ARENA_MAX="4") == "False"  # the operator's MALLOC_ARENA_MAX wins
