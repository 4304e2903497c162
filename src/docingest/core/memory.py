"""Keep a long run's resident memory flat: hand memory that is free but still mapped back to the OS.

glibc keeps memory freed by a thread mapped in that thread's arena, and a run frees a lot all the time (the encoder's
activations, tokenizer output, documents coming back from the parse workers, Qdrant's upsert copies). Sampled with
``mallinfo2`` through a run of 3000 generated documents, the arenas' free space grew from 3 to 635 MB while the memory
in use stayed between 300 and 420 MB: the process grew with the run's length rather than with what it held.

``malloc_trim`` releases every arena's free pages. Measured on the generated corpus (2 CPUs), one call every 3 s while
a run writes: peak RSS at 10k documents 1702 → 1528 MB, at 1k 1290 → 1249 MB, no change in time. Once a second cut the
1k peak to 1190 MB but cost 4 % of the run (freed activations released and faulted in again); a fixed 4 MB ``mmap``
threshold (no arena growth at all) cost 12 %. Elsewhere than glibc all of this does nothing.

A long-running ``docingest serve`` allocates from many threads (uvicorn's, its flow runs', the embedder's), and glibc
gives contending threads arenas of their own, up to eight per core; :func:`limit_arenas` caps them at its start (what
``MALLOC_ARENA_MAX`` does). Measured with the soak's uploads (7 users at once into 3 collections, 2 CPUs): after 175
uploads 811 MiB (mean of eight runs) capped at two arenas against 856 MiB (six runs) uncapped; no change in time.
It also releases once as its last run ends (``service/jobs.py``): what a run frees as it ends stayed mapped, ~80 MiB
in an idle service after 175 uploads.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import ctypes

_libc: ctypes.CDLL | Literal[False] | None = None
M_ARENA_MAX = -8  # glibc's malloc.h


def _glibc() -> ctypes.CDLL | Literal[False]:
    """glibc, loaded once; False elsewhere."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim, _libc.mallopt  # noqa: B018 - both exist, or this is not glibc
        except (OSError, AttributeError):
            _libc = False
    return _libc


def release_freed_memory() -> None:
    """One ``malloc_trim(0)``: every arena's free pages go back to the OS (a few ms)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


def limit_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas from now on (call it before the threads start). ``0``, a set ``MALLOC_ARENA_MAX``
    or another C library leave them as they are; True when the cap was applied."""
    libc = _glibc()
    if arenas <= 0 or os.environ.get("MALLOC_ARENA_MAX") or not libc:
        return False
    return libc.mallopt(M_ARENA_MAX, arenas) == 1


class FreedMemoryReleaser:
    """A daemon thread that calls :func:`release_freed_memory` every ``interval_s`` (none if it is 0) until ``stop``
    (or the ``with`` block's end)."""

    def __init__(self, interval_s: float = 3.0) -> None:
        self.interval_s = interval_s
        self.calls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="docingest-memory-release", daemon=True)

    def start(self) -> FreedMemoryReleaser:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            release_freed_memory()
            self.calls += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> FreedMemoryReleaser:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
