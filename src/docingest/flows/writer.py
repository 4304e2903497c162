"""The run's accumulator (outcomes -> the typed result, progress, circuit breaker) and the writer that embeds and
stores prepared documents in pools, pipelined: one pool gathering, one being encoded, one being stored."""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from prefect import get_run_logger
from prefect.utilities.annotations import quote

from docingest.core import faults, progress
from docingest.core.ids import document_id
from docingest.core.memory import FreedMemoryReleaser
from docingest.core.metrics import RunMetrics
from docingest.core.pipeline import build_points, manifest_record
from docingest.core.plan import Profile
from docingest.core.store import QdrantLocation
from docingest.datamodel import (
    ChangeKind,
    DocumentOutcome,
    DocumentStatus,
    FailureItem,
    IngestResult,
    ManifestRecord,
    PreparedDocument,
    SkippedItem,
    Stage,
)
from docingest.exceptions import ConfigurationError, DocingestError
from docingest.flows.artifacts import ProgressArtifact
from docingest.options import IngestOptions
from docingest.tasks.embed import embed_batch_task
from docingest.tasks.store import (
    finalize_documents_task,
    upsert_points_task,
)


class Run:
    """Accumulates per-document outcomes into the typed result and reports progress."""

    def __init__(self, collection: str, source: str, total: int, logger=None) -> None:
        self.logger = logger
        self.result = IngestResult(collection=collection, source=source)
        self.result.documents.seen = total
        self.total = total
        self.artifact: ProgressArtifact | None = None
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


def outcome_of(p: PreparedDocument, status: DocumentStatus | None = None, stage: Stage | None = None,
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


def pool_ready(pending: int, pool_size: int, *, encoder_busy: bool, idle: bool = False) -> bool:
    """Whether the chunks gathered so far go to the encoder now: a full pool always; while the encoder is idle, a
    pool of ``MIN_POOL`` chunks (so it starts early), or anything when no document arrived for a while (``idle``).
    While the encoder works the pool keeps growing: fewer, larger pools pad less."""
    if pending <= 0:
        return False
    if pending >= pool_size:
        return True
    return not encoder_busy and (idle or pending >= min(MIN_POOL, pool_size))


class Writer:
    """Buffers prepared documents and writes them in pools: embed -> upsert -> drop old versions + manifest.

    Three stages, each in a thread of its own and one pool at a time, in order: this writer gathers documents; an
    embed thread encodes a pool; a store thread upserts and finalizes it. The next pool grows while the previous one
    is encoded (an idle encoder takes what is there, from 64 chunks), so an encoder-bound run encodes few large pools,
    which pad less, and parsing never waits for the encoder."""

    def __init__(self, run: Run, location: QdrantLocation, collection: str, profile: Profile,
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
        self.run.record(outcome_of(p))

    def maybe_flush(self, idle: bool = False) -> None:
        """Hand the pending pool to the encoder when it is full, or when the encoder is idle and the pool has 64
        chunks (any, when no document arrived for a while: ``idle``)."""
        busy = self._embedding is not None and not self._embedding.done()
        if pool_ready(self.pending_chunks, self.options.embed.pool_size, encoder_busy=busy, idle=idle):
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
            self.run.record(outcome_of(d))

    def _fail(self, d: PreparedDocument, stage: Stage, error: str) -> None:
        with self._lock:
            self.records.append(manifest_record(d, self.profile, self.known.get(d.document.path),
                                                DocumentStatus.FAILURE, stage, error))
        self.run.record(outcome_of(d, DocumentStatus.FAILURE, stage, error))


IDLE = object()


class BackgroundWriter:
    """Runs a :class:`Writer` in one thread of its own, fed through a bounded queue, so documents keep being parsed
    and chunked while a batch is embedded and upserted (before, the flow thread did both in turn and the cores idled
    between them). The writer keeps its single-threaded state; the first error it meets is raised in the flow
    thread at the next hand-over or at ``close``."""

    def __init__(self, writer: Writer, maxsize: int) -> None:
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
                item = IDLE
            if item is None:
                break
            if self.error is None and not self.abandoned:
                try:
                    if item is IDLE:
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

