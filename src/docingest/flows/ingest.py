"""The ingest flow: discover -> plan -> parse+chunk (per document) -> embed (batched across documents) -> upsert."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import re
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

from docingest.blocks.loading import load_block
from docingest.blocks.sources import open_source_block
from docingest.core import faults, progress
from docingest.core.embed import LoadedModel, load_model
from docingest.core.ids import document_id
from docingest.core.memory import FreedMemoryReleaser
from docingest.core.metrics import Pusher, RunMetrics
from docingest.core.parse import accurate_models_status
from docingest.core.pipeline import build_points, manifest_record
from docingest.core.plan import Action, Plan, Profile, make_plan, resolve_profile
from docingest.core.sources import open_source
from docingest.core.store import QdrantLocation, QdrantStore
from docingest.core.worker import close_pools
from docingest.datamodel import (
    ChangeKind,
    DeadLetterItem,
    DocumentOutcome,
    DocumentStatus,
    FailureItem,
    IngestResult,
    ManifestRecord,
    PreparedDocument,
    SkippedItem,
    Stage,
)
from docingest.exceptions import CircuitBreakerOpen, ConfigurationError, DocingestError
from docingest.options import IngestOptions, Isolation, PdfMode, Preset
from docingest.settings import get_settings
from docingest.tasks.embed import embed_batch_task
from docingest.tasks.prepare import PrepareFailed, prepare_document_task, prepare_documents_task
from docingest.tasks.store import (
    delete_documents_task,
    ensure_collection_task,
    finalize_documents_task,
    upsert_points_task,
)


class QdrantTarget(BaseModel):
    """Override where Qdrant lives for one run (no secrets here: API keys come from settings or a block)."""

    url: str | None = Field(default=None, description="Qdrant server URL.")
    path: str | None = Field(default=None, description="Folder for Qdrant local mode.")


def resolve_location(qdrant: QdrantTarget | None = None, qdrant_block: str | None = None) -> QdrantLocation:
    """Flow override > block > settings (DOCINGEST_QDRANT_URL / DOCINGEST_QDRANT_PATH) > .docingest/qdrant."""
    settings = get_settings()
    if qdrant_block:
        from docingest.blocks.qdrant import QdrantConnection

        location = load_block(qdrant_block, QdrantConnection).location()
    else:
        location = QdrantLocation(
            url=settings.qdrant_url,
            path=settings.resolved_qdrant_path(),
            api_key=settings.qdrant_api_key,
            timeout=settings.qdrant_timeout,
        )
    return _override(location, qdrant)


def _override(location: QdrantLocation, qdrant: QdrantTarget | None) -> QdrantLocation:
    if qdrant and qdrant.url:
        return location.model_copy(update={"url": qdrant.url, "path": None})
    if qdrant and qdrant.path:
        return location.model_copy(update={"url": None, "path": Path(qdrant.path)})
    return location


def resolve_target(collection: str | None, qdrant: QdrantTarget | None = None, qdrant_block: str | None = None,
                   collection_block: str | None = None) -> tuple[str, QdrantLocation]:
    """The collection name and where it lives: a QdrantCollection block gives both (``collection`` still renames,
    ``qdrant`` still relocates); otherwise ``collection`` with ``resolve_location``."""
    if collection_block:
        from docingest.blocks.qdrant import QdrantCollection

        block = load_block(collection_block, QdrantCollection)
        return collection or block.collection_name, _override(block.connection.location(), qdrant)
    if not collection:
        raise ConfigurationError("give a collection or a collection block")
    return collection, resolve_location(qdrant, qdrant_block)


def resolve_result_storage(name: str | None):
    """The saved result-storage block (``DOCINGEST_RESULT_STORAGE`` or the flow's ``result_storage``): any Prefect
    WritableFileSystem block, e.g. ``docingest-s3-result-storage/parse-cache``; None keeps Prefect's default
    (local files, PREFECT_RESULTS_LOCAL_STORAGE_PATH)."""
    from prefect.filesystems import WritableFileSystem

    name = name or get_settings().result_storage
    if not name:
        return None
    if "/" in name:
        block = load_block(name, WritableFileSystem)
    else:
        from docingest.blocks.results import S3ResultStorage

        block = load_block(name, S3ResultStorage)
    if hasattr(block, "check"):
        block.check()
    return block


def preflight(source: str | None, options: IngestOptions, qdrant: QdrantTarget | None = None,
              qdrant_block: str | None = None, source_block: str | None = None, collection: str | None = None,
              collection_block: str | None = None, result_storage: str | None = None) -> None:
    """Check configuration before a run starts (raises ConfigurationError / StoreError): source, PDF mode, Qdrant,
    result storage."""
    from docingest import plugins
    from docingest.core.parse import resolve_pdf_mode

    options = with_preset(options)
    plugins.check(options)
    _open(source, options, source_block)
    resolve_pdf_mode(options.parse.pdf_mode)
    _, location = resolve_target(collection or "preflight", qdrant, qdrant_block, collection_block)
    QdrantStore(location).collection_exists("docingest-preflight")
    resolve_result_storage(result_storage)


def warm_up(collection: str | None, options: IngestOptions, qdrant: QdrantTarget | None = None,
            qdrant_block: str | None = None, collection_block: str | None = None, embedder_block: str | None = None,
            source: str | None = None, source_block: str | None = None) -> bool:
    """Start the parse workers' fork server and load the model in the background when the run will parse and embed;
    the CLI calls it while Prefect's temporary server boots. That is known for a collection that does not exist yet;
    for a re-sync of a local folder, the plan (the dry run's: listing and hashing, no model, each file's hash is
    remembered for the run itself) must find a document to process. Other re-syncs are not warmed up: their listing
    costs requests, and a no-op must stay cheap."""
    given, options = options, with_preset(options)
    name, location = resolve_target(collection, qdrant, qdrant_block, collection_block)
    if embedder_block:
        return False
    if QdrantStore(location).collection_exists(name):
        if source_block or not source or "://" in source:
            return False
        plan, model, options = _planned(source, collection, given, qdrant, qdrant_block,
                                        collection_block=collection_block)
        if not any(d.action is Action.PROCESS for d in plan.documents):
            return False
    else:
        settings = get_settings()
        model = load_model(options.embed.model or settings.embed_model, settings.embed_device, options.embed.backend)
    if options.parse.isolation is Isolation.PROCESS and get_settings().task_runner == "threads":
        from docingest.core.worker import start_server

        start_server()
    if isinstance(model, LoadedModel) and not model.loaded:
        _prefetch_model(model)
    return True


class _Run:
    """Accumulates per-document outcomes into the typed result and reports progress."""

    def __init__(self, collection: str, source: str, total: int, logger=None) -> None:
        self.logger = logger
        self.result = IngestResult(collection=collection, source=source)
        self.result.documents.seen = total
        self.total = total
        self.artifact: _ProgressArtifact | None = None
        self.done = 0
        # For the circuit breaker, counted where each outcome is first known: parse/chunk outcomes in the flow thread
        # as documents are taken (the writer thread may lag behind), embed/upsert failures by the writer.
        self.taken = self.taken_failed = self.late_failed = 0
        self._lock = threading.RLock()  # outcomes arrive from the flow thread, the writer and its store thread

    def tripped(self, options: IngestOptions) -> str | None:
        """The circuit breaker: a reason to stop when too many of the documents processed so far failed."""
        n, failed = self.taken, self.taken_failed + self.late_failed
        if n >= options.breaker_min_docs and failed / n > options.max_failure_ratio:
            return (f"circuit breaker: {failed} of {n} processed documents failed "
                    f"({failed / n:.0%} > --max-failure-ratio {options.max_failure_ratio:g}); "
                    "stopped submitting new documents")
        return None

    def record(self, outcome: DocumentOutcome, processed: bool = True) -> None:
        with self._lock:
            self._record(outcome, processed)

    def _record(self, outcome: DocumentOutcome, processed: bool) -> None:
        counts = self.result.documents
        self.result.outcomes.append(outcome)
        if processed and outcome.status is DocumentStatus.FAILURE and outcome.stage in (Stage.EMBED, Stage.UPSERT):
            self.late_failed += 1
        if outcome.status is DocumentStatus.SKIPPED:
            counts.skipped += 1
            self.result.skipped.append(SkippedItem(source=outcome.source, path=outcome.path,
                                                   reason=outcome.error or ""))
            if self.logger is not None:  # one WARNING line per document left out, with its reason
                self.logger.warning("skipped %s: %s", outcome.path, outcome.error)
        else:
            kind = outcome.change or ChangeKind.NEW
            setattr(counts, kind.value, getattr(counts, kind.value) + 1)
        self.result.pages += outcome.pages
        if outcome.status is DocumentStatus.FAILURE:
            counts.failed += 1
            stage = outcome.stage.value if outcome.stage else "unknown"
            self.result.failures.append(FailureItem(source=outcome.source, path=outcome.path, stage=stage,
                                                    error=outcome.error or ""))
            if self.logger is not None:  # one WARNING line per failed document, with its stage and reason
                self.logger.warning("failed %s at %s: %s", outcome.path, stage, outcome.error)
        self.done += 1
        if self.artifact is not None:
            self.artifact.update(self.done, counts.failed, final=self.done == self.total)
        progress.emit(progress.ProgressEvent(self.done, self.total, outcome.path, outcome.status.value))


def _outcome(p: PreparedDocument, status: DocumentStatus | None = None, stage: Stage | None = None,
             error: str | None = None) -> DocumentOutcome:
    return DocumentOutcome(
        source=p.document.uri,
        path=p.document.path,
        status=status or p.status,
        change=p.change,
        stage=stage or p.stage,
        error=error or p.error,
        chunks=len(p.chunks) if (status or p.status) is DocumentStatus.SUCCESS else 0,
        pages=p.pages if (status or p.status) is DocumentStatus.SUCCESS else 0,
    )


MIN_POOL = 64  # chunks from which an idle encoder starts on a pool (up to options.embed.pool_size while it works)


class _Writer:
    """Buffers prepared documents and writes them in pools: embed -> upsert -> drop old versions + manifest.

    Three stages, each in a thread of its own and one pool at a time, in order: this writer gathers documents; an
    embed thread encodes a pool; a store thread upserts and finalizes it. The next pool grows while the previous one
    is encoded (an idle encoder takes what is there, from 64 chunks), so an encoder-bound run encodes few large pools,
    which pad less, and parsing never waits for the encoder."""

    def __init__(self, run: _Run, location: QdrantLocation, collection: str, profile: Profile,
                 options: IngestOptions, model, known: dict[str, ManifestRecord], metrics: RunMetrics) -> None:
        self.metrics = metrics
        self.run, self.location, self.collection = run, location, collection
        self.profile, self.options, self.model, self.known = profile, options, model, known
        self.pending: list[PreparedDocument] = []
        self.records: list[ManifestRecord] = []
        self.replace: list[tuple[str, str | None]] = []
        self.logger = get_run_logger()
        self._lock = threading.Lock()  # records, replace and counters: shared with the store thread
        self.pending_chunks = 0
        self._store_pool: ThreadPoolExecutor | None = None
        self._stored: Future | None = None  # the previous batch's upsert + finalize
        self._embed_pool: ThreadPoolExecutor | None = None
        self._embedding: Future | None = None  # the previous pool's encode (then handed to the store thread)

    def add(self, p: PreparedDocument) -> None:
        for stage, seconds in p.timings.items():
            self.metrics.observe_stage(stage, seconds)
        previous = self.known.get(p.document.path)
        if p.status is DocumentStatus.SUCCESS:
            if p.error:  # ingested, with a note (pages OCR could not read)
                self.logger.warning("%s: %s", p.document.path, p.error)
            self.pending.append(p)
            self.pending_chunks += len(p.chunks)
            self.maybe_flush()
            return
        if p.status is DocumentStatus.FAILURE:
            # The old version (if any) stays searchable; the failure is recorded so the next run retries it.
            with self._lock:
                self.records.append(manifest_record(p, self.profile, previous, DocumentStatus.FAILURE, p.stage,
                                                    p.error))
        elif p.stage in (Stage.CHUNK, Stage.DISCOVER) or previous is None:
            # Skipped after reading it (empty, or a format this installation cannot read): recorded, so the next run
            # finds it unchanged instead of parsing it again (a changed fingerprint, e.g. OCR installed, re-checks it).
            # A document that became empty also loses its old chunks; any other skip keeps a previous version.
            with self._lock:
                self.records.append(manifest_record(p, self.profile, previous, DocumentStatus.SKIPPED, p.stage,
                                                    p.error))
                if previous is not None:
                    self.replace.append((document_id(p.document.source_uri, p.document.path), None))
        self.run.record(_outcome(p))

    def maybe_flush(self, idle: bool = False) -> None:
        """Hand the pending pool to the encoder when it is full, or when the encoder is idle and the pool has 64
        chunks (any, when no document arrived for a while: ``idle``)."""
        n = self.pending_chunks
        busy = self._embedding is not None and not self._embedding.done()
        if n and (n >= self.options.embed.pool_size or (not busy and (idle or n >= min(MIN_POOL,
                                                                                    self.options.embed.pool_size)))):
            self.flush()

    def flush(self) -> None:
        docs, self.pending, self.pending_chunks = self.pending, [], 0
        if docs:
            self.wait_embedded()  # one pool in the encoder at a time, in order
            if self._embed_pool is None:
                self._embed_pool = ThreadPoolExecutor(1, thread_name_prefix="docingest-embed")
            context = contextvars.copy_context()  # the flow run's context: tasks and the run logger work there
            self._embedding = self._embed_pool.submit(context.run, self._write, docs)
        with self._lock:
            records, replace = self.records, self.replace
            self.records, self.replace = [], []
        if records or replace:
            self._deleted(finalize_documents_task(self.location, self.collection, quote(replace), quote(records)))

    def finish(self) -> None:
        """The end of the run: everything written (or the first error raised) and the store thread gone."""
        try:
            self.flush()
            self.wait_embedded()
            self.wait_stored()
            self.flush()  # records the embed and store threads added last (embed and upsert failures)
        finally:
            self.stop_store()

    def wait_embedded(self) -> None:
        """Wait for the previous pool's encode (its hand-over to the store thread included); raises its error."""
        embedding, self._embedding = self._embedding, None
        if embedding is not None:
            embedding.result()

    def wait_stored(self) -> None:
        """Wait for the previous batch's upsert and finalize; raises its error."""
        stored, self._stored = self._stored, None
        if stored is not None:
            stored.result()

    def stop_store(self) -> None:
        """Wait for an encode and a store in progress (their errors dropped: the run already failed) and end the
        embed and store threads."""
        with contextlib.suppress(BaseException):
            self.wait_embedded()
        if self._embed_pool is not None:
            self._embed_pool.shutdown(wait=True)
            self._embed_pool = None
        with contextlib.suppress(BaseException):
            self.wait_stored()
        if self._store_pool is not None:
            self._store_pool.shutdown(wait=True)
            self._store_pool = None

    def _deleted(self, n: int) -> None:
        with self._lock:
            self.run.result.chunks.deleted += n

    def _embed(self, docs: list[PreparedDocument]):
        texts = [c.embed_text for d in docs for c in d.chunks]
        started = time.perf_counter()
        vectors = embed_batch_task(self.model, quote(texts), self.options.embed.batch_size, n_docs=len(docs))
        self.metrics.observe_embed(len(texts), time.perf_counter() - started)
        self.run.result.chunks.embedded += len(texts)
        out, start = [], 0
        for d in docs:
            out.append(vectors[start : start + len(d.chunks)])
            start += len(d.chunks)
        return out

    def _write(self, docs: list[PreparedDocument]) -> None:
        try:
            per_doc = self._embed(docs)
        except ConfigurationError:
            raise  # the model itself (not a document): the run stops
        except DocingestError as exc:
            if len(docs) == 1:
                self._fail(docs[0], Stage.EMBED, str(exc))
                return
            # Isolate the document that breaks the batch: embed one by one.
            ok, per_doc = [], []
            for d in docs:
                try:
                    per_doc.extend(self._embed([d]))
                    ok.append(d)
                except DocingestError as exc:
                    self._fail(d, Stage.EMBED, str(exc))
            docs = ok
            if not docs:
                return
        points = [pt for d, vecs in zip(docs, per_doc, strict=True) for pt in build_points(d, vecs, self.profile)]
        self.wait_stored()  # one batch in the store thread at a time, in order
        if self._store_pool is None:
            self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="docingest-store")
        context = contextvars.copy_context()  # the flow run's context: tasks and the run logger work in the thread
        self._stored = self._store_pool.submit(context.run, self._store, docs, points)

    def _store(self, docs: list[PreparedDocument], points: list) -> None:
        try:
            started = time.perf_counter()
            self.run.result.chunks.upserted += upsert_points_task(
                self.location, self.collection, quote(points), self.options.store.upsert_batch_size
            )
            self.metrics.observe_stage("upsert", time.perf_counter() - started)
        except DocingestError as exc:
            for d in docs:
                self._fail(d, Stage.UPSERT, str(exc))
            return
        faults.checkpoint("after-upsert")
        records = [manifest_record(d, self.profile, self.known.get(d.document.path), DocumentStatus.SUCCESS)
                   for d in docs]
        replace = [(r.doc_id, r.version) for r in records]
        self._deleted(finalize_documents_task(self.location, self.collection, quote(replace), quote(records)))
        faults.checkpoint("after-finalize")
        for d in docs:
            self.run.record(_outcome(d))

    def _fail(self, d: PreparedDocument, stage: Stage, error: str) -> None:
        with self._lock:
            self.records.append(manifest_record(d, self.profile, self.known.get(d.document.path),
                                                DocumentStatus.FAILURE, stage, error))
        self.run.record(_outcome(d, DocumentStatus.FAILURE, stage, error))


_IDLE = object()


class _BackgroundWriter:
    """Runs a :class:`_Writer` in one thread of its own, fed through a bounded queue, so documents keep being parsed
    and chunked while a batch is embedded and upserted (before, the flow thread did both in turn and the cores idled
    between them). The writer keeps its single-threaded state; the first error it meets is raised in the flow
    thread at the next hand-over or at ``close``."""

    def __init__(self, writer: _Writer, maxsize: int) -> None:
        import contextvars
        import queue
        import threading

        self.writer, self.error, self.abandoned = writer, None, False
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        context = contextvars.copy_context()  # the flow run's context: tasks and the run logger work in the thread
        self.thread = threading.Thread(target=context.run, args=(self._loop,), name="docingest-writer", daemon=True)
        self.releaser = FreedMemoryReleaser().start()  # freed memory goes back to the OS while the run writes
        self.thread.start()

    def _loop(self) -> None:
        import queue

        while True:
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:  # no document for a moment: an idle encoder takes what is pending
                item = _IDLE
            if item is None:
                break
            if self.error is None and not self.abandoned:
                try:
                    if item is _IDLE:
                        self.writer.maybe_flush(idle=True)
                    else:
                        self.writer.add(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the flow thread
                    self.error = exc
        try:
            if self.error is None and not self.abandoned:
                try:
                    self.writer.finish()
                except BaseException as exc:  # noqa: BLE001
                    self.error = exc
            else:
                self.writer.stop_store()
        finally:
            self.releaser.stop()

    def add(self, prepared: PreparedDocument) -> None:
        if self.error is not None:
            self.close()
        self.queue.put(prepared)

    def abandon(self) -> None:
        """The flow thread failed: drop what is queued (the next run redoes it) and end the thread."""
        self.abandoned = True
        if self.thread.is_alive():
            self.queue.put(None)
            # Wait for a batch already being written (bounded): no writes after the flow has reported its failure.
            self.thread.join(timeout=120)

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def make_task_runner(kind: str | None = None, address: str | None = None, workers: int | None = None):
    """The task runner for parse-and-chunk tasks: threads (default) or Dask (DOCINGEST_TASK_RUNNER=dask, an existing
    cluster at DOCINGEST_DASK_ADDRESS or a local cluster of DOCINGEST_DASK_WORKERS processes)."""
    settings = get_settings()
    kind = kind or settings.task_runner
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=2)
    if kind != "dask":
        raise ConfigurationError(f"unknown task runner {kind!r}: use threads or dask")
    try:
        import dask
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigurationError("the dask task runner needs prefect-dask: pip install 'docingest[dask]'") from None
    address = address or settings.dask_address
    if address:
        return DaskTaskRunner(address=address)
    # Parse workers are child processes of the Dask worker: Dask's workers must not be daemonic for that.
    dask.config.set({"distributed.worker.daemon": False})
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers or settings.dask_workers, "processes": True,
                                          "threads_per_worker": 1, "dashboard_address": None})


@flow(
    name="ingest-documents",
    task_runner=make_task_runner(),
    validate_parameters=True,
    log_prints=True,
)
def ingest_documents(
    source: str | None = None,
    collection: str | None = None,
    options: IngestOptions | None = None,
    qdrant: QdrantTarget | None = None,
    qdrant_block: str | None = None,
    source_block: str | None = None,
    embedder_block: str | None = None,
    collection_block: str | None = None,
    result_storage: str | None = None,
    preset: Preset | None = None,
) -> IngestResult:
    """Sync a folder of documents into a Qdrant collection.

    Every run first plans each document against the collection's manifest (content hash + settings fingerprint):
    unchanged documents are not parsed; new and changed ones are parsed with Docling in isolated worker processes,
    chunked with HybridChunker, embedded in batches across documents and upserted; a changed document's new version
    is written before its old one is removed. A failing document is reported and never stops the run (until the
    circuit breaker trips). With ``options.mode = "full"``, documents that vanished from the source are removed,
    only within this source's scope and never past ``max_delete_ratio`` unless forced.

    Args:
        source: Folder or file, file:// URI, s3://bucket/prefix, or a git URL (see options.source.git_ref/_path).
        collection: Qdrant collection to keep in sync.
        options: Parse, chunk, embed, store and sync options.
        qdrant: Where Qdrant lives for this run; default from settings (DOCINGEST_QDRANT_URL / _PATH).
        qdrant_block: Name of a saved QdrantConnection block to use instead of settings.
        source_block: Name of a saved S3BucketSource or GitRepositorySource block, instead of ``source``.
        embedder_block: Name of a saved EmbedderSettings block (model, device, batch size).
        collection_block: Name of a saved QdrantCollection block (connection + collection), instead of
            ``collection`` and ``qdrant_block``.
        result_storage: Saved block for the parse cache (``docingest-s3-result-storage/NAME`` or any Prefect
            WritableFileSystem block), shared by workers on other machines; default DOCINGEST_RESULT_STORAGE, else
            Prefect's local result storage.
        preset: default, high-throughput or memory-efficient: workers, window, batch sizes and embedding backend
            set together (same as ``options.preset``); options set explicitly win.
    """
    logger = get_run_logger()
    started = time.monotonic()
    given = options
    options = with_preset(options, preset)
    settings = get_settings()

    # 1. Where things live, and what shapes the output (model, PDF mode, chunk size -> fingerprint).
    collection, location = resolve_target(collection, qdrant, qdrant_block, collection_block)
    adopt_collection_model(given, options, location, collection, embedder_block, preset)
    src, model, profile = _resolve(source, options, source_block, embedder_block)
    storage = resolve_result_storage(result_storage)
    prepare = prepare_document_task.with_options(result_storage=storage) if storage else prepare_document_task
    prepare_batch = prepare_documents_task.with_options(result_storage=storage) if storage \
        else prepare_documents_task
    # The alias is resolved once: a run that started before a model migration's switch finishes where it began.
    physical = ensure_collection_task(location, collection, model.info.dimension)
    logger.info("ingesting %s into %r (%s) on %s (model %s, %d-token chunks, mode %s)", src.uri, collection, physical,
                location.describe(), model.info.name, profile.max_tokens, options.mode.value)
    if options.parse.pdf_mode is PdfMode.AUTO:
        logger.info("pdf-mode auto: PDFs use %s conversion (%s)", profile.pdf_mode.value, accurate_models_status()[1])

    # One run at a time per collection and scope: an OS file lock on this machine (freed by the kernel if the
    # process dies), and with a Prefect server also a global concurrency limit with a lease (freed by the server's
    # repossessor when a crashed run's lease expires), which serializes runs on different machines.
    metrics = RunMetrics(collection, src.uri)
    pusher = Pusher(metrics, settings.pushgateway_url)  # no-op without DOCINGEST_PUSHGATEWAY_URL
    result = None
    try:
        with scope_lock(collection, src.uri, settings), _server_limit(collection, src.uri, settings):
            try:
                result = _sync(src, collection, options, location, model, profile, prepare, metrics, physical,
                               prepare_batch)
            finally:
                if options.parse.isolation is Isolation.PROCESS:
                    close_pools()
        result.duration_s = time.monotonic() - started
    finally:
        if result is not None:
            result.stage_seconds = dict(metrics.stage_totals)
            metrics.finish(result, succeeded=result.ok and not result.aborted)
        else:  # the run itself broke (e.g. Qdrant went away): recorded as a failed run
            metrics.status.labels(collection, src.uri).set(0)
        pusher.close()
    _publish_artifacts(collection, result)
    d = result.documents
    logger.info("done in %.1fs: %d seen, %d new, %d changed, %d unchanged, %d deleted, %d skipped, %d failed; "
                "%d chunks upserted, %d deleted", result.duration_s, d.seen, d.new, d.changed, d.unchanged, d.deleted,
                d.skipped, d.failed, result.chunks.upserted, result.chunks.deleted)
    if late := sum(o.status is DocumentStatus.SKIPPED and o.stage is not Stage.DISCOVER for o in result.outcomes):
        logger.info("%d of the documents the plan counted as new or changed %s skipped after reading (empty, or "
                    "content this installation cannot read): the plan cannot know that before parsing", late,
                    "was" if late == 1 else "were")
    if result.aborted:
        raise CircuitBreakerOpen(result.aborted, result)
    return result


def plan_documents(source: str | None, collection: str | None, options: IngestOptions | None = None,
                   qdrant: QdrantTarget | None = None, qdrant_block: str | None = None,
                   source_block: str | None = None, collection_block: str | None = None,
                   embedder_block: str | None = None) -> Plan:
    """The plan a run would follow, computed without writing anything (``--dry-run``)."""
    return _planned(source, collection, options, qdrant, qdrant_block, source_block, collection_block,
                    embedder_block)[0]


def _planned(source: str | None, collection: str | None, options: IngestOptions | None = None,
             qdrant: QdrantTarget | None = None, qdrant_block: str | None = None, source_block: str | None = None,
             collection_block: str | None = None, embedder_block: str | None = None):
    """(plan, model, resolved options) of a run, computed without writing anything or loading the weights."""
    given, options = options, with_preset(options)
    collection, location = resolve_target(collection, qdrant, qdrant_block, collection_block)
    adopt_collection_model(given, options, location, collection, embedder_block)
    src, model, profile = _resolve(source, options, source_block, embedder_block)
    store = QdrantStore(location)
    physical = store.resolve(collection)
    known = store.manifest(physical, src.uri) if store.collection_exists(store.manifest_name(physical)) else {}
    return make_plan(src.uri, list(src.iter_documents()), known, profile, options), model, options


def with_preset(options: IngestOptions | None, preset: Preset | None = None) -> IngestOptions:
    """The options a run uses: ``preset`` (if given) replaces ``options.preset``, whose values fill every option
    that was not set explicitly."""
    options = options or IngestOptions()
    if preset is not None:
        options = options.model_copy(update={"preset": Preset(preset)})
    return options.resolved()


def adopt_collection_model(given: IngestOptions | None, options: IngestOptions, location: QdrantLocation,
                           collection: str, embedder_block: str | None = None, preset: Preset | None = None) -> None:
    """An existing collection keeps the model (and backend) it was built or migrated with, unless a model is given
    explicitly (options, an embedder block, or DOCINGEST_EMBED_MODEL): a sync after ``docingest migrate`` must not
    re-embed everything with the default model."""

    if options.embed.model or embedder_block or "embed_model" in get_settings().model_fields_set:
        return
    store = QdrantStore(location)
    if not store.collection_exists(collection):
        return
    name, backend = store.collection_model(store.resolve(collection))
    if name is None:
        return
    options.embed.model = name
    backend_given = given is not None and ("backend" in given.embed.model_fields_set or given.preset is not None)
    if not backend_given and preset is None:
        options.embed.backend = backend


def _open(source: str | None, options: IngestOptions, source_block: str | None):
    if source_block:
        return open_source_block(source_block, options.source)
    if not source:
        raise ConfigurationError("give a source or a source block")
    return open_source(source, options.source)


def _resolve(source: str | None, options: IngestOptions, source_block: str | None = None,
             embedder_block: str | None = None):
    """Source, loaded model and the profile (settings fingerprint) of a run."""
    settings = get_settings()
    src = _open(source, options, source_block)
    name, device = settings.embed_model, settings.embed_device
    if embedder_block:  # block over settings; an explicit options.embed.model over both
        from docingest.blocks.embedder import EmbedderSettings

        embedder = load_block(embedder_block, EmbedderSettings)
        name, device = embedder.model, embedder.device or device
        options.embed.batch_size = embedder.batch_size
    model = load_model(options.embed.model or name, device, options.embed.backend)
    return src, model, resolve_profile(options, model.info)


def _scope_name(collection: str, scope: str) -> str:
    return f"docingest-{collection}-{hashlib.sha256(scope.encode()).hexdigest()[:12]}"


@contextmanager
def _server_limit(collection: str, scope: str, settings):
    """A limit-1 Prefect global concurrency limit for (collection, scope), when a Prefect server is configured.

    Not with a temporary API server (Prefect's ephemeral one, or the CLI's): it runs no repossessor, so a crashed run's
    slot would never be freed there.
    """
    from prefect.concurrency.sync import concurrency
    from prefect.context import FlowRunContext

    from docingest.ephemeral import temporary_api

    if temporary_api():
        yield
        return
    name = _scope_name(collection, scope)
    FlowRunContext.get().client.upsert_global_concurrency_limit_by_name(name, limit=1)
    with concurrency(name, occupy=1, lease_duration=settings.lock_lease_s, timeout_seconds=settings.lock_timeout_s):
        yield


@contextmanager
def scope_lock(collection: str, scope: str, settings):
    """An exclusive file lock on ``<home>/locks/<collection>-<scope hash>.lock`` (filelock); waits for a run holding
    it, up to ``lock_timeout_s`` (forever when unset), then raises TimeoutError."""
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    folder = settings.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f"{_scope_name(collection, scope)}.lock", thread_local=False)
    try:
        lock.acquire(timeout=-1 if settings.lock_timeout_s is None else settings.lock_timeout_s, poll_interval=0.2)
    except LockTimeout:
        raise TimeoutError(f"another run holds {collection!r} / {scope}") from None
    try:
        yield
    finally:
        lock.release()


def _sync(src, collection: str, options: IngestOptions, location: QdrantLocation, model, profile: Profile,
          prepare=prepare_document_task, metrics: RunMetrics | None = None, physical: str | None = None,
          prepare_batch=prepare_documents_task) -> IngestResult:
    from prefect.runtime import flow_run

    logger = get_run_logger()
    # 2. Plan every document before any work: hash each file, compare with the manifest; full mode lists deletions
    #    (and refuses past the delete guard before anything is written).
    physical = physical or QdrantStore(location).resolve(collection)  # points and manifest live there
    known = QdrantStore(location).manifest(physical, src.uri)
    plan = make_plan(src.uri, list(src.iter_documents()), known, profile, options)
    counts = plan.counts()
    logger.info("plan: %s", ", ".join(f"{v} {k}" for k, v in counts.items()))
    run = _Run(collection, src.uri, len(plan.documents), logger)
    run.artifact = _ProgressArtifact(collection, len(plan.documents), str(flow_run.get_id() or ""))
    run.result.mode = options.mode.value
    run.result.flow_run_id = str(flow_run.get_id() or "")
    metrics = metrics or RunMetrics(collection, src.uri)
    writer = _BackgroundWriter(_Writer(run, location, physical, profile, options, model, known, metrics),
                               maxsize=options.window)

    if options.source.follow_symlinks:
        logger.warning("following symbolic links out of the source root (--follow-symlinks): files they lead to "
                       "are ingested as part of %s", src.uri)
    for p in plan.documents:
        if p.action is Action.SKIP and p.doc.skip_reason and p.known is not None and p.known.chunks:
            # Left out by the listing (a link out of the source, a FIFO...) but indexed by an earlier run: its chunks
            # go, so nothing read through a link that is no longer followed stays searchable.
            writer.add(PreparedDocument(document=p.doc, change=p.change, status=DocumentStatus.SKIPPED,
                                        stage=Stage.DISCOVER, error=p.reason))
        elif p.action is Action.SKIP:
            run.record(DocumentOutcome(source=p.doc.uri, path=p.doc.path, status=DocumentStatus.SKIPPED,
                                       change=p.change, stage=Stage.DISCOVER, error=p.reason))
        elif p.action is Action.UNCHANGED:
            run.record(DocumentOutcome(source=p.doc.uri, path=p.doc.path, status=DocumentStatus.UNCHANGED,
                                       change=p.change, chunks=p.known.chunks if p.known else 0))
        elif p.action is Action.DEAD_LETTER:
            stage = p.known.stage or Stage.PARSE
            run.result.dead_letter.append(DeadLetterItem(source=p.doc.uri, stage=stage.value,
                                                         error=p.known.error or "", attempts=p.known.attempts))
            run.record(DocumentOutcome(source=p.doc.uri, path=p.doc.path, status=DocumentStatus.FAILURE,
                                       change=p.change, stage=stage, error=p.reason), processed=False)

    # 3. Parse+chunk new and changed documents in a bounded window; embed+upsert in batches as they finish.
    if plan.by_action(Action.PROCESS) and isinstance(model, LoadedModel) and not model.loaded:
        _prefetch_model(model)  # the weights load while the first documents are parsed
    work = plan.by_action(Action.PROCESS)
    # Batches never exceed a quarter of the window, so several are always in flight (parsing stays concurrent).
    per_task = options.docs_per_task or (1 if len(work) < BATCH_FROM else min(DOCS_PER_TASK,
                                                                             max(1, options.window // 4)))
    window: deque[tuple[PrefectFuture, int]] = deque()  # (future, its documents)
    in_flight = 0
    try:
        for start in range(0, len(work), per_task):
            if run.result.aborted:
                break
            group = work[start:start + per_task]
            items = [(p.doc, p.change, _attempt(p)) for p in group]
            # Not quote()d: Prefect's Dask runner would hand the wrapper itself to the task (the arguments are small or
            # opaque objects Prefect does not walk into, so quoting saves nothing here).
            if per_task == 1:
                future = prepare.submit(src, *items[0][:2], profile, options, model, items[0][2])
            else:
                label = f"{group[0].doc.path} (+{len(group) - 1})" if len(group) > 1 else group[0].doc.path
                future = prepare_batch.submit(src, items, profile, options, model, label)
            window.append((future, len(group)))
            in_flight += len(group)
            metrics.set_in_flight(in_flight)
            while in_flight >= options.window and window:
                future, n = window.popleft()
                _take(future, writer, run, options)
                in_flight -= n
                metrics.set_in_flight(in_flight)
        while window:
            future, n = window.popleft()
            _take(future, writer, run, options)
            in_flight -= n
            metrics.set_in_flight(in_flight)
    except BaseException:
        writer.abandon()
        raise
    writer.close()  # the last batch is written, or the writer's error is raised here

    # 4. Full sync: remove what vanished from this source's scope, only after a run that was not aborted.
    if plan.deleted and not run.result.aborted:
        started = time.perf_counter()
        run.result.chunks.deleted += delete_documents_task(location, physical, quote(plan.deleted))
        metrics.observe_stage("delete", time.perf_counter() - started)
        run.result.documents.deleted = len(plan.deleted)
        run.result.deleted = [r.uri for r in plan.deleted]
    return run.result


def _prefetch_model(model: LoadedModel) -> None:
    """Load a lazily loaded model in a background thread; a load error surfaces where the model is first used."""
    import threading

    def load() -> None:
        with contextlib.suppress(Exception):
            model.model  # noqa: B018 - the property loads it

    threading.Thread(target=load, name="docingest-model-load", daemon=True).start()


BATCH_FROM = 64  # documents to parse from which parse-and-chunk task runs take several documents each
DOCS_PER_TASK = 8  # per-document task runs cost ~18 s of a 115 s run on 1k generated documents (2 CPUs)


def _attempt(p) -> int:
    return p.known.attempts if p.known and p.known.stage in (Stage.READ, Stage.PARSE, Stage.CHUNK) else 0


def _take(future: PrefectFuture, writer: _BackgroundWriter, run: _Run, options: IngestOptions) -> None:
    try:
        result = future.result()
    except PrepareFailed as failed:  # a document's own failure (the task run shows Failed in the UI)
        result = failed.prepared
    cached = future.state.name == "Cached"  # parsed by an earlier run: this run did none of that work
    for prepared in result if isinstance(result, list) else [result]:
        if cached:
            prepared.timings = {}  # stage seconds count work done in this run
        if prepared.status in (DocumentStatus.SUCCESS, DocumentStatus.FAILURE):
            run.taken += 1
            run.taken_failed += prepared.status is DocumentStatus.FAILURE
        writer.add(prepared)
        faults.checkpoint("after-prepare")
        if not run.result.aborted and (reason := run.tripped(options)):
            run.result.aborted = reason
            get_run_logger().error(reason)


TABLE_ROWS = 1000  # per-document rows in the outcomes table artifact (failures come first, so none is cut)


_PROGRESS_ARTIFACTS: dict[str, object] = {}  # flow run id -> its progress artifact: a retried run reuses it


class _ProgressArtifact:
    """The flow run's Prefect progress artifact ("37 of 60 documents, 2 failed"), updated as documents finish (at most
    once a second); one per flow run, also when Prefect retries the run."""

    def __init__(self, collection: str, total: int, flow_run_id: str = "") -> None:
        self.collection, self.total, self.last = collection, total, 0.0
        self.id = _PROGRESS_ARTIFACTS.get(flow_run_id) if flow_run_id else None
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            if self.id is None:
                self.id = create_progress_artifact(progress=0.0, key=_artifact_key(collection, "progress"),
                                                   description=self._describe(0, 0))
                if flow_run_id:
                    _PROGRESS_ARTIFACTS[flow_run_id] = self.id
            else:  # a retry of the same flow run starts its count again on the same artifact
                update_progress_artifact(self.id, progress=0.0, description=self._describe(0, 0))
        except Exception as exc:  # noqa: BLE001 - reporting must never fail a sync
            get_run_logger().warning("could not create the progress artifact: %s", exc)

    def _describe(self, done: int, failed: int) -> str:
        return f"{done:,} of {self.total:,} documents, {failed:,} failed ({self.collection})"

    def update(self, done: int, failed: int = 0, final: bool = False) -> None:
        now = time.monotonic()
        if self.id is None or (not final and now - self.last < 1.0):
            return
        self.last = now
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.id, progress=100.0 * done / self.total if self.total else 100.0,
                                     description=self._describe(done, failed))
        except Exception:  # noqa: BLE001
            self.id = None


def _artifact_key(collection: str, suffix: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", collection.lower()).strip("-") or "collection"
    return f"docingest-{slug}-{suffix}"


def _publish_artifacts(collection: str, result: IngestResult) -> None:
    """Markdown summary and failures table, under keys stable per collection so the latest is easy to find."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    d, c = result.documents, result.chunks
    lines = [
        f"# Ingest into `{collection}`",
        f"Source `{result.source}`, mode **{result.mode}**, {result.duration_s:.1f} s"
        + (f" — **aborted**: {result.aborted}" if result.aborted else ""),
        "",
        "| seen | new | changed | unchanged | deleted | skipped | failed | dead letter |",
        "|---|---|---|---|---|---|---|---|",
        f"| {d.seen} | {d.new} | {d.changed} | {d.unchanged} | {d.deleted} | {d.skipped} | {d.failed} "
        f"| {len(result.dead_letter)} |",
        "",
        f"Chunks: {c.embedded} embedded, {c.upserted} upserted, {c.deleted} deleted.",
    ]
    if result.duration_s > 0 and c.embedded:
        lines.append(f"Throughput: {c.embedded / result.duration_s:.1f} chunks/s.")
    try:
        create_markdown_artifact(key=_artifact_key(collection, "summary"), markdown="\n".join(lines),
                                 description=f"Latest docingest run on {collection}")
        order = {DocumentStatus.FAILURE: 0, DocumentStatus.SKIPPED: 1, DocumentStatus.SUCCESS: 2,
                 DocumentStatus.UNCHANGED: 3}
        outcomes = sorted(result.outcomes, key=lambda o: (order[o.status], o.path))
        rows = [{"document": o.source, "status": o.status.value, "change": o.change.value if o.change else "",
                 "stage": o.stage.value if o.stage else "", "chunks": o.chunks, "error": o.error or ""}
                for o in outcomes[:TABLE_ROWS]]
        if len(outcomes) > TABLE_ROWS:
            rows.append({"document": f"... {len(outcomes) - TABLE_ROWS} more (see the run's JSON result)",
                         "status": "", "change": "", "stage": "", "chunks": 0, "error": ""})
        create_table_artifact(key=_artifact_key(collection, "documents"), table=rows or [
                              {"document": "", "status": "no documents", "change": "", "stage": "", "chunks": 0,
                               "error": ""}],
                              description=f"Per-document outcomes of the latest run on {collection}: failures "
                              "first, then skipped, ingested, unchanged")
    except Exception as exc:  # noqa: BLE001 - reporting must never fail a finished sync
        get_run_logger().warning("could not publish artifacts: %s", exc)


if __name__ == "__main__":
    import sys

    print(ingest_documents(sys.argv[1], sys.argv[2]).model_dump_json(indent=2, exclude={"outcomes"}))
