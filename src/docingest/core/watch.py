"""A source's changes as batches. A local folder: file-system events (watchdog: inotify on Linux, polling where the
kernel refuses more watches) coalesced over a quiet period, with editors' temporary files left out. A bucket or a git
repository: a cheap check every few seconds (the listing's ETags, ``git ls-remote``), and pushed notifications.

A batch names what changed as include patterns relative to the folder: a file's own path (glob characters escaped),
or ``folder/**`` for a folder created, deleted or moved. A run narrowed to those patterns in full mode ends with the
collection the folder's present state gives: new and changed files ingested, vanished ones deleted.

Events can be lost (inotify's queue overflows, the folder is unmounted, the watch limit is reached): a batch then
asks for a reconcile, a run over the whole folder, so missed events cost latency, never correctness.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

logger = logging.getLogger("docingest.watch")

# Editors' and tools' transient files, never documents: backups (`notes.md~`), vim's swap files and its write test
# (`4913`), Emacs's lock and autosave files, LibreOffice's lock files, partial downloads, temporary files.
IGNORED_NAMES = ("*~", ".*.sw?", "4913", ".#*", "#*#", ".~lock.*#", "~$*", "*.tmp", "*.temp", "*.part",
                 "*.crdownload", ".DS_Store")
# The overflow record watchdog logs (watchdog.observers.inotify_c) when the kernel dropped events.
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"


def ignored(rel: str) -> bool:
    """True for an editor's or a tool's transient file, by its name (any folder)."""
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch(name, pattern) for pattern in IGNORED_NAMES)


@dataclass
class Batch:
    """Changes to apply together: include patterns (files, ``folder/**``), and why the whole folder must be
    reconciled instead, if it must."""

    patterns: set[str] = field(default_factory=set)
    reconcile: str | None = None
    first_event: float | None = None  # time.time() of the batch's first event (latency is measured from it)


class ChangeBatcher:
    """Collects changed paths from the watcher's thread and hands them out as a batch once no event came for
    ``quiet_s`` (or ``max_wait_s`` after the first one, so a folder that never goes quiet is still synced)."""

    def __init__(self, quiet_s: float, max_wait_s: float) -> None:
        self.quiet_s, self.max_wait_s = quiet_s, max(max_wait_s, quiet_s)
        self._cond = threading.Condition()
        self._patterns: set[str] = set()
        self._first: float | None = None  # monotonic
        self._first_wall: float | None = None
        self._last = 0.0
        self._reconcile: str | None = None

    def add(self, pattern: str) -> None:
        with self._cond:
            now = time.monotonic()
            if not self._patterns:
                self._first, self._first_wall = now, time.time()
            self._patterns.add(pattern)
            self._last = now
            self._cond.notify_all()

    def reconcile(self, why: str) -> None:
        """Ask for a run over the whole folder as soon as the current batch is taken (events may have been lost)."""
        with self._cond:
            self._reconcile = self._reconcile or why
            if self._first_wall is None:
                self._first_wall = time.time()
            self._cond.notify_all()

    def pending(self) -> bool:
        with self._cond:
            return bool(self._patterns) or self._reconcile is not None

    def take(self, timeout: float) -> Batch | None:
        """The next batch, or None when none is ready within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                if self._reconcile is not None or (self._patterns and self._settled(now)):
                    batch = Batch(self._patterns, self._reconcile, self._first_wall)
                    self._patterns, self._reconcile, self._first, self._first_wall = set(), None, None, None
                    return batch
                if now >= deadline:
                    return None
                wait = deadline - now
                if self._patterns and self._first is not None:
                    wait = min(wait, self._last + self.quiet_s - now, self._first + self.max_wait_s - now)
                self._cond.wait(max(wait, 0.001))

    def _settled(self, now: float) -> bool:
        assert self._first is not None
        return now - self._last >= self.quiet_s or now - self._first >= self.max_wait_s


def escape(rel: str) -> str:
    """A path as an include pattern that matches only itself (glob characters escaped)."""
    return glob.escape(rel)


def unescape(pattern: str) -> str:
    """``escape``'s inverse: ``[[]`` is ``[``, ``[*]`` is ``*``, ``[?]`` is ``?``."""
    return re.sub(r"\[([\[*?])\]", r"\1", pattern)


class _Handler:
    """watchdog's event handler: each file event becomes its path, each folder event ``folder/**``."""

    def __init__(self, root: Path, batcher: ChangeBatcher) -> None:
        self.root, self.batcher = root, batcher
        self.paused = threading.Event()  # tests: events dropped, as an overflow drops them

    def dispatch(self, event: Any) -> None:
        if self.paused.is_set():
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = os.fsdecode(raw)
            try:
                rel = Path(path).relative_to(self.root).as_posix()
            except ValueError:  # moved out of the folder: its source half is inside, this half is not
                continue
            if rel in ("", ".") or ignored(rel):
                continue
            self.batcher.add(f"{escape(rel)}/**" if event.is_directory else escape(rel))


class _OverflowSignal(logging.Handler):
    """watchdog reports inotify's queue overflow only as a WARNING log record: it becomes a reconcile."""

    def __init__(self, batcher: ChangeBatcher) -> None:
        super().__init__(logging.WARNING)
        self.batcher = batcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.batcher.reconcile("events were lost (inotify queue overflow)")


class FolderWatch:
    """Watches ``root`` (recursively) into ``batcher``: inotify where it can, polling every ``poll_s`` where the
    kernel refuses (watch or instance limit reached), with one WARNING."""

    def __init__(self, root: Path, batcher: ChangeBatcher, *, poll_s: float = 2.0, polling: bool = False) -> None:
        self.root, self.batcher, self.poll_s, self.polling = root.resolve(), batcher, poll_s, polling
        self.handler = _Handler(self.root, batcher)
        self._observer: Any = None
        self._overflow = _OverflowSignal(batcher)

    @property
    def kind(self) -> str:
        return "polling" if self.polling else "inotify"

    def start(self) -> None:
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
        )

        kinds = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileDeletedEvent, FileMovedEvent,
                 DirCreatedEvent, DirDeletedEvent, DirMovedEvent]  # not opened/closed-unwritten: our own reads
        logging.getLogger(OVERFLOW_LOGGER).addHandler(self._overflow)
        if not self.polling:
            from watchdog.observers import Observer

            try:
                _watch_limit_fault()
                observer: Any = Observer()
                observer.schedule(self.handler, str(self.root), recursive=True, event_filter=kinds)
                observer.start()
                self._observer = observer
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                logger.warning("file-system events are not available for %s (%s): polling it every %g s instead "
                               "(raise fs.inotify.max_user_watches to get them back)", self.root, exc.strerror or exc,
                               self.poll_s)
                self.polling = True
                self.batcher.reconcile("switched to polling")
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=self.poll_s)
        observer.schedule(self.handler, str(self.root), recursive=True, event_filter=kinds)
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self._overflow)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


def _watch_limit_fault() -> None:
    """``DOCINGEST_FAULT=watch-limit``: the kernel refuses the watch, as it does past fs.inotify.max_user_watches."""
    if os.environ.get("DOCINGEST_FAULT") == "watch-limit":
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


class SourcePoll:
    """A remote source checked every ``poll_s`` seconds into ``batcher``. ``snapshot()`` lists what the source holds
    as ``{name: version}`` (an S3 listing's keys and ETags: one request per 1,000 objects; a git ref's commit: one
    ``ls-remote``); each name new, changed or gone since the last check becomes a batch pattern, or, with ``whole``,
    any difference asks for a reconcile (a new commit is synced as a whole: unchanged blobs are skipped by hash).

    A failed check is one WARNING (until a check succeeds again) and nothing else: the watch never deletes for it,
    and the next successful check compares with the last good listing."""

    def __init__(self, snapshot: Callable[[], dict[str, str]], batcher: ChangeBatcher, *, poll_s: float,
                 whole: bool = False, what: str = "the source") -> None:
        self.snapshot, self.batcher, self.poll_s, self.whole, self.what = snapshot, batcher, poll_s, whole, what
        self._last: dict[str, str] | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return f"polling every {self.poll_s:g} s"

    def start(self) -> None:
        self.check()  # the listing the first sync is compared with: what changes during that sync is a batch after it
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="docingest-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def check(self) -> None:
        """One check: what changed since the last good one goes to the batcher."""
        try:
            now = self.snapshot()
        except Exception as exc:  # noqa: BLE001 - an unreachable source delays changes; it never stops the watch
            if not self._failing:
                logger.warning("cannot check %s for changes (%s): retrying every %g s", self.what, exc, self.poll_s)
            self._failing = True
            return
        if self._failing:
            logger.warning("%s can be checked again", self.what)
            self._failing = False
        last, self._last = self._last, now
        if last is None or last == now:
            return
        if self.whole:
            self.batcher.reconcile(f"{self.what} changed")
            return
        for name in sorted(set(last) | set(now)):
            if last.get(name) != now.get(name) and not ignored(name):
                self.batcher.add(escape(name))
