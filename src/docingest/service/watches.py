"""Live sources in the service's process: ``docingest serve --watch SOURCE=COLLECTION`` keeps each folder, bucket or
repository in sync with its collection (one :class:`~docingest.live.LiveSync` each, in a thread of its own, on the
service's store), so one process serves uploads, search and live sources. Bucket notifications
(``POST /api/v1/notifications/s3``, see ``routes/notifications.py``) reach the watches of their bucket and prefix.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from docingest.exceptions import ConfigurationError
from docingest.live import LiveSync, WatchOptions
from docingest.targets import QdrantTarget

log = logging.getLogger("docingest.service.watch")
COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # as the routes accept them
STOP_WAIT_S = 8.0  # a batch still running after this is abandoned, as a crash would leave it (the next run ends it)


def parse_watch(value: str) -> tuple[str, str]:
    """``SOURCE=COLLECTION`` -> (source, collection). The last ``=`` splits: a collection name holds none."""
    source, sep, collection = value.rpartition("=")
    if not sep or not source or not COLLECTION.match(collection):
        raise ConfigurationError(f"--watch {value!r}: expected SOURCE=COLLECTION (a folder, s3://bucket/prefix or a "
                                 f"git URL; a collection name of letters, digits, '_', '.', '-')")
    return source, collection


@dataclass
class Watched:
    """One live source and how it stands: starting, ready, failed (its error) or stopped."""

    live: LiveSync
    state: str = "starting"
    error: str | None = None
    thread: threading.Thread | None = None

    def public(self) -> dict[str, Any]:
        return {"collection": self.live.collection, "state": self.state, "documents": self.live.documents,
                "batches": self.live.batches, "error": self.error}


class Watches:
    """The service's live sources: started with the service, stopped (the current batch finished or abandoned)
    before it ends."""

    def __init__(self, values: list[str], watch: WatchOptions, qdrant: QdrantTarget | None = None) -> None:
        pairs = [parse_watch(value) for value in values]
        if len({collection for _, collection in pairs}) < len(pairs):
            raise ConfigurationError("--watch names a collection twice: one source per collection")
        self.watched = [Watched(LiveSync(source, collection, qdrant=qdrant, watch=watch)) for source, collection in pairs]
        for watched in self.watched:
            watched.live.emit = partial(self._seen, watched)
        self._stop = threading.Event()

    def _log(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "ready":
            log.info("live: %s ready with %s documents", event["collection"], event["documents"])
        elif kind in ("paused", "error"):
            log.warning("live: %s: %s", kind, event.get("path") or event.get("error"))
        else:
            log.info("live: %s %s%s", kind, event["path"], f" ({event['error']})" if event.get("error") else "")

    def start(self, api_ready: Callable[[], None]) -> None:
        """Start each watch in a thread of its own, once Prefect's API answers (``api_ready`` starts the temporary
        server, once for the jobs and the watches together)."""
        for watched in self.watched:
            watched.thread = threading.Thread(target=self._run, args=(watched, api_ready), daemon=True,
                                              name=f"docingest-watch-{watched.live.collection}")
            watched.thread.start()

    def _run(self, watched: Watched, api_ready: Callable[[], None]) -> None:
        try:
            api_ready()
            watched.live.run(self._stop)
            watched.state = "stopped"
        except Exception as exc:  # noqa: BLE001 - one source that cannot be watched never stops the service
            watched.state, watched.error = "failed", str(exc)
            log.error("live: cannot keep %s live in %s: %s", watched.live.source, watched.live.collection, exc)

    def _seen(self, watched: Watched, event: dict[str, Any]) -> None:
        if event["event"] == "ready":
            watched.state = "ready"
        self._log(event)

    def notify(self, bucket: str, key: str) -> list[tuple[LiveSync, str]]:
        """The watches a bucket notification names (each with the key's path in its source); nothing is queued."""
        found = []
        for watched in self.watched:
            rel = watched.live.key_path(bucket, key)
            if rel is not None:
                found.append((watched.live, rel))
        return found

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        self._stop.set()
        for watched in self.watched:
            if watched.thread is not None:
                watched.thread.join(timeout=timeout)
                if watched.thread.is_alive():
                    log.warning("live: the batch in progress for %s is abandoned: the next run finishes it",
                                watched.live.collection)
