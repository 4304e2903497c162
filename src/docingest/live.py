"""Live sync (``docingest watch``, ``docingest serve --watch``): one warm process keeps a collection in sync with
its source as it changes: a local folder (file-system events), an S3 bucket (its listing's ETags every ``poll_s``
seconds, and the bucket notifications ``serve`` receives) or a git repository (``git ls-remote`` every ``poll_s``).

The process syncs the source once, then stays up with the model loaded, the parse workers started and the store
open, and runs the ``ingest-documents`` flow once per batch of changes, narrowed to the changed paths (in full mode,
so what was deleted or moved away is removed; a new git commit is synced whole, unchanged blobs skipped by hash).
Each batch is a flow run like any other: in the Prefect UI, with its summary and outcomes; each indexed, deleted or
failed document is also a Prefect event (``docingest.document.indexed`` / ``.deleted`` / ``.failed``, resource
``docingest.collection.<name>``).

What keeps it correct when events go missing: a reconcile (a run over the whole source) every ``rescan_s`` seconds,
at once after an inotify overflow or a switch to polling, and when the folder comes back after it vanished or was
unmounted (the watch pauses meanwhile and never deletes for it). The delete guard applies to each batch, as a share
of the whole source (a batch that deletes the one file it names is not a 100 % deletion).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from docingest import store_reads  # noqa: F401 - the store the watch holds answers other processes' reads
from docingest.core.sources import Source
from docingest.core.sources.git import GitSource, is_git_url
from docingest.core.sources.local import LocalFolderSource, matches
from docingest.core.sources.names import is_hidden
from docingest.core.sources.s3 import S3Source, parse_s3_uri
from docingest.core.watch import ChangeBatcher, FolderWatch, SourcePoll, escape, ignored, unescape
from docingest.datamodel import DocumentStatus, IngestResult
from docingest.exceptions import ConfigurationError, DocingestError
from docingest.options import IngestOptions, SyncMode
from docingest.targets import QdrantTarget

if TYPE_CHECKING:
    from docingest.flows.runspec import RunInputs, RunSpec

logger = logging.getLogger("docingest.watch")

Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class WatchOptions:
    """How the watch batches and checks: the quiet period, the longest a busy source waits, the reconcile period,
    and how often a source without events is checked (default: every 2 s for a folder whose events the kernel
    refuses, every 30 s for a bucket or a repository: each check is a request to it)."""

    debounce_ms: int = 200
    max_wait_ms: int = 5_000
    rescan_s: float = 600.0
    poll_s: float | None = None
    polling: bool = False

    def poll_every(self, remote: bool) -> float:
        return self.poll_s if self.poll_s is not None else (30.0 if remote else 2.0)


@dataclass(frozen=True)
class RunBlocks:
    """The saved blocks a watch's runs take, as ``docingest ingest`` does (each one optional)."""

    source_block: str | None = None
    collection_block: str | None = None
    qdrant_block: str | None = None
    embedder_block: str | None = None
    result_storage: str | None = None


class LiveSync:
    """Keeps ``collection`` in sync with ``source`` until ``stop`` is set (see the module's text)."""

    def __init__(self, source: str | Path | None, collection: str | None, options: IngestOptions | None = None,
                 qdrant: QdrantTarget | None = None, watch: WatchOptions | None = None,
                 emit: Emit | None = None, blocks: RunBlocks | None = None) -> None:
        self.blocks = blocks or RunBlocks()
        if not source and not self.blocks.source_block:
            raise ConfigurationError("give a source or a source block")
        if not collection and not self.blocks.collection_block:
            raise ConfigurationError("give a collection or a collection block")
        options = options or IngestOptions()
        self.root: Path | None = None  # a local folder's, once known
        self.s3: tuple[str, str] | None = None  # a bucket's (bucket, prefix), once known: notifications are matched
        self.source = str(source) if source else None
        if self.source and self.source.startswith("s3://"):
            self.s3 = parse_s3_uri(self.source)
        elif self.source and not (is_git_url(self.source) or options.source.git_ref or options.source.git_path):
            if "://" in self.source and not self.source.startswith("file://"):
                raise ConfigurationError(f"unsupported source {self.source!r}: a folder, s3:// or a git URL")
            self.root = Path(self.source.removeprefix("file://")).expanduser().resolve()
            if not self.root.is_dir():
                raise ConfigurationError(f"{source} is not a folder: a watch keeps a folder, a bucket or a "
                                         f"repository live")
            self.source = str(self.root)
        self.given_collection = collection
        self.collection = collection or ""  # the block's, once resolved
        self.qdrant = qdrant
        self.options = options.model_copy(update={"mode": SyncMode.FULL, "delete_guard_of": "source"})
        self.watch = watch or WatchOptions()
        self.emit = emit or (lambda event: None)
        self.batcher = ChangeBatcher(self.watch.debounce_ms / 1000, self.watch.max_wait_ms / 1000)
        self.watcher: FolderWatch | SourcePoll | None = None
        self.documents = 0
        self.batches = 0
        self._device: int | None = None
        self._source: Source | None = None
        self._spec: RunSpec | None = None  # the run as opened at the start: the first sync and the warm-up use it

    def key_path(self, bucket: str, key: str) -> str | None:
        """The path in this watch's source of an object of ``bucket`` (a bucket notification's), None when it does
        not lie under this watch's bucket and prefix."""
        if self.s3 is None or bucket != self.s3[0]:
            return None
        prefix = f"{self.s3[1]}/" if self.s3[1] else ""
        rel = key[len(prefix):] if key.startswith(prefix) else ""
        return rel if rel and not rel.endswith("/") else None

    def changed(self, path: str) -> None:
        """A change pushed to the watch (a bucket notification's object): queued as a check would have found it."""
        if not (is_hidden(path) or ignored(path)):
            self.batcher.add(escape(path))

    # -- the loop ------------------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        from prefect.context import SyncClientContext

        from docingest.core.worker import pools_in_use
        from docingest.flows.runspec import pinned

        # The parse workers stay up between batches, not one start per change; one Prefect client serves every
        # batch's flow run (a client per run cost ~30 ms of building an SSL context, measured with py-spy).
        with pools_in_use(), SyncClientContext.get_or_create():
            spec = self._open()
            self._start_watching()  # before the first sync: what changes during it is a batch after it
            with pinned(self._inputs(self.options), spec):  # the source opened once (a repository fetched once)
                self._sync(None, "first sync")
            self._warm_up()
            self.emit({"event": "ready", "collection": self.collection, "documents": self.documents,
                       "at": time.time(), "watching": self.watcher.kind if self.watcher else None})
            next_rescan = time.monotonic() + self.watch.rescan_s
            while not stop.is_set():
                if not self._present():
                    self._pause(stop)
                    continue
                batch = self.batcher.take(timeout=0.5)
                if batch is None:
                    if time.monotonic() >= next_rescan:
                        self.batcher.reconcile("periodic rescan")
                    continue
                if not self._present():  # the batch may be the folder going away: never delete for that
                    self._pause(stop)
                    continue
                if batch.reconcile:
                    self._sync(None, batch.reconcile)
                    next_rescan = time.monotonic() + self.watch.rescan_s
                else:
                    self._sync(self._include(batch.patterns), f"{len(batch.patterns)} change(s)")
            self._stop_watching()

    def _inputs(self, options: IngestOptions) -> RunInputs:
        from docingest.flows.runspec import RunInputs

        b = self.blocks
        return RunInputs(source=self.source, collection=self.given_collection, options=options, qdrant=self.qdrant,
                         qdrant_block=b.qdrant_block, source_block=b.source_block, embedder_block=b.embedder_block,
                         collection_block=b.collection_block)

    def _open(self) -> RunSpec:
        """Resolve the run once (blocks loaded, source opened, model found): its source says how changes are seen."""
        from docingest.flows.runspec import resolve_spec

        spec = self._spec = resolve_spec(self._inputs(self.options))
        self.collection, self._source = spec.collection, spec.source
        if isinstance(spec.source, LocalFolderSource):
            if not spec.source.root.is_dir():
                raise ConfigurationError(f"{spec.source.root} is not a folder: a watch keeps a folder, a bucket or a "
                                         f"repository live")
            self.root = spec.source.root
            self._device = self.root.stat().st_dev
        elif isinstance(spec.source, S3Source):
            self.s3 = (spec.source.bucket, spec.source.prefix)
        return spec

    def _warm_up(self) -> None:
        """Load the model's weights and start the parse workers' fork server now, not at the first change: a first
        sync with nothing to write touches neither (measured: the first batch then took 5.0 s, later ones 0.35 s)."""
        from docingest.core.worker import start_server
        from docingest.options import Isolation
        from docingest.settings import get_settings

        spec = self._spec
        if spec is None:
            return
        try:
            if spec.options.parse.isolation is Isolation.PROCESS and get_settings().prefect.task_runner == "threads":
                start_server()
            spec.model.model  # noqa: B018 - the property loads the weights
        except Exception as exc:  # noqa: BLE001 - only ever saves time; the next run reports any problem
            logger.debug("warm-up skipped: %s", exc)

    def _start_watching(self) -> None:
        source = self._source
        if self.root is not None:
            self.watcher = FolderWatch(self.root, self.batcher, poll_s=self.watch.poll_every(remote=False),
                                       polling=self.watch.polling)
        elif isinstance(source, S3Source):
            self.watcher = SourcePoll(lambda: {d.path: d.content_hash for d in source.iter_documents()},
                                      self.batcher, poll_s=self.watch.poll_every(remote=True), what=source.uri)
        elif isinstance(source, GitSource):
            self.watcher = SourcePoll(lambda: {source.ref: source.remote_commit()}, self.batcher, whole=True,
                                      poll_s=self.watch.poll_every(remote=True), what=f"{source.url} at {source.ref}")
        else:
            raise ConfigurationError(f"cannot watch {type(source).__name__}: a folder, a bucket or a repository")
        self.watcher.start()

    def _stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def _present(self) -> bool:
        """The folder is there and is the one the watch started on (not an empty mount point left by an unmount);
        a bucket or a repository always is (a failed check only delays its changes)."""
        if self.root is None:
            return True
        try:
            return self.root.is_dir() and self.root.stat().st_dev == self._device
        except OSError:
            return False

    def _pause(self, stop: threading.Event) -> None:
        logger.warning("%s is gone or unmounted: the watch pauses (nothing is deleted) until it is back", self.root)
        self.emit({"event": "paused", "path": str(self.root), "at": time.time()})
        self._stop_watching()
        while not stop.is_set() and not self._present_again():
            stop.wait(1.0)
        if stop.is_set():
            return
        logger.warning("%s is back: reconciling the whole folder", self.root)
        self.batcher.take(timeout=0)  # what was seen while it went away is superseded by the reconcile
        self._start_watching()
        self.batcher.reconcile("the folder is back")

    def _present_again(self) -> bool:
        try:
            if self.root is not None and self.root.is_dir():
                self._device = self.root.stat().st_dev  # remounted: a new device is the folder back
                return True
        except OSError:
            pass
        return False

    # -- one batch -----------------------------------------------------------------------------------------------------
    def _include(self, patterns: set[str]) -> list[str]:
        """The batch's patterns, kept within the user's own filters: a changed file only if the filters select it, a
        folder that exists as its selected files (and ``folder/**`` for what vanished under it)."""
        include, exclude = self.options.source.include, self.options.source.exclude
        narrowed: set[str] = set()
        for pattern in patterns:
            if not pattern.endswith("/**"):
                rel = unescape(pattern)
                if matches(rel, include) and not matches(rel, exclude):
                    narrowed.add(pattern)
                continue
            folder = unescape(pattern[:-3])
            if include == ["**/*"] or self.root is None or not (self.root / folder).is_dir():
                narrowed.add(pattern)  # everything under it, or (gone) only deletions, within the user's exclude
                continue
            for path in (self.root / folder).rglob("*"):  # a folder moved in: its files as the user's include selects
                rel = path.relative_to(self.root).as_posix()
                if path.is_file() and matches(rel, include) and not matches(rel, exclude):
                    narrowed.add(escape(rel))
        return sorted(narrowed)

    def _sync(self, include: list[str] | None, why: str) -> IngestResult | None:
        from docingest.flows.ingest import ingest_documents

        options = self.options
        if include is not None:
            if not include:
                return None
            options = options.model_copy(update={"source": options.source.model_copy(update={"include": include})})
        started = time.monotonic()
        try:
            b = self.blocks
            result = ingest_documents(source=self.source, collection=self.given_collection, options=options,
                                      qdrant=self.qdrant, qdrant_block=b.qdrant_block, source_block=b.source_block,
                                      embedder_block=b.embedder_block, collection_block=b.collection_block,
                                      result_storage=b.result_storage)
        except DocingestError as exc:
            logger.error("%s: the run failed: %s", why, exc)
            self.emit({"event": "error", "error": str(exc), "at": time.time()})
            return None
        at = time.time()
        self.batches += 1
        if include is None:
            self.documents = result.documents.seen - result.documents.skipped
        else:
            self.documents += result.documents.new - result.documents.deleted
        logger.info("%s: %d indexed, %d deleted, %d failed in %.2f s", why,
                    result.documents.new + result.documents.changed, result.documents.deleted,
                    result.documents.failed, time.monotonic() - started)
        self._report(result, at, first=why == "first sync")
        return result

    def _report(self, result: IngestResult, at: float, first: bool = False) -> None:
        """One event per document the run indexed, deleted, failed or skipped (after the first sync, whose documents
        the ready event counts: its failures only)."""
        events: list[dict[str, Any]] = []
        for outcome in result.outcomes:
            kind = {DocumentStatus.SUCCESS: "indexed", DocumentStatus.FAILURE: "failed",
                    DocumentStatus.SKIPPED: "skipped"}.get(outcome.status)
            if kind is None or (kind == "skipped" and ignored(outcome.path)) or (first and kind != "failed"):
                continue
            events.append({"event": kind, "path": outcome.path,
                           "change": outcome.change.value if outcome.change else None, "chunks": outcome.chunks,
                           "error": outcome.error, "at": at})
        prefix = result.source.rstrip("/") + "/"
        for uri in [] if first else result.deleted:
            path = unquote(uri[len(prefix):]) if uri.startswith(prefix) else uri
            events.append({"event": "deleted", "path": path, "change": "deleted", "chunks": 0, "error": None,
                           "at": at})
        for event in events:
            self.emit(event)
        _prefect_events(self.collection, events, result.flow_run_id)


def _prefect_events(collection: str, events: list[dict[str, Any]], flow_run_id: str) -> None:
    """One Prefect event per indexed, deleted or failed document, so automations can react to them."""
    wanted = [e for e in events if e["event"] in ("indexed", "deleted", "failed")]
    if not wanted:
        return
    try:
        from prefect.events import emit_event
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return
    related = [{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}] \
        if flow_run_id else []
    for event in wanted:
        try:
            emit_event(event=f"docingest.document.{event['event']}",
                       resource={"prefect.resource.id": f"docingest.collection.{collection}",
                                 "prefect.resource.name": collection},
                       related=related,
                       payload={k: event[k] for k in ("path", "change", "chunks", "error")})
        except Exception as exc:  # noqa: BLE001 - an event that cannot be sent never stops the watch
            logger.debug("could not emit a Prefect event: %s", exc)
            return

