"""The writer that embeds and stores prepared documents in pools, pipelined with Prefect futures: one pool gathering,
one being encoded, one being stored."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from prefect import get_run_logger
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque, quote

from docingest.core.ids import document_id
from docingest.core.memory import FreedMemoryReleaser
from docingest.core.pipeline import manifest_record
from docingest.core.write import EmbeddedPool, WrittenPool
from docingest.datamodel import (
    DocumentOutcome,
    DocumentStatus,
    ManifestRecord,
    PreparedDocument,
    Stage,
)
from docingest.exceptions import ConfigurationError, DocingestError
from docingest.flows.run import Run

if TYPE_CHECKING:
    from docingest.flows.context import RunContext


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


@dataclass
class Pool:
    """One pool on its way: its encode and its write, as Prefect futures (a ``records`` entry is a finalize of
    skipped or failed documents)."""

    embedded: PrefectFuture | None = None
    written: PrefectFuture | None = None
    records: PrefectFuture | None = None
    encoded: EmbeddedPool | None = None  # a pool embedded elsewhere (on a Dask worker), only written here

    def done(self) -> bool:
        return all(finished(f) for f in (self.embedded, self.written, self.records) if f is not None)


def finished(future: PrefectFuture) -> bool:
    """Whether a task run submitted to a task runner has ended (asks the runner's own future, never the API)."""
    return cast(PrefectConcurrentFuture, future).wrapped_future.done()  # the thread pool runners' futures


class Writer:
    """Gathers prepared documents into pools and writes them: embed -> upsert + finish (old versions, manifest).

    Encoding and writing are Prefect task runs, submitted to two task runners of one thread each (one encoder, one
    writer) and chained with futures: the write of pool n takes pool n's encode as its input, so pool n+1 gathers
    while pool n is encoded and pool n-1 is stored, in order. The flow thread never waits for them, except when
    pools pile up (``MAX_ENCODING`` waiting for the encoder, ``MAX_IN_FLIGHT`` in all). Outcomes are recorded as
    pools finish, in order. Use as a context manager: leaving it early cancels what has not started."""

    MAX_ENCODING = 4  # pools submitted and not yet encoded (the one being encoded and those queued behind it)
    MAX_IN_FLIGHT = 8  # pools submitted and not yet written

    def __init__(self, ctx: RunContext, run: Run, known: dict[str, ManifestRecord]) -> None:
        """``known``: the manifest the run was planned against (a document's previous version)."""
        self.metrics, self.stages = ctx.metrics, ctx.stages
        self.run, self.location, self.collection = run, ctx.location, ctx.physical
        self.profile, self.options, self.model, self.known = ctx.profile, ctx.options, ctx.model, known
        self.pending: list[PreparedDocument] = []
        self.pending_chunks = 0
        self.records: list[ManifestRecord] = []
        self.replace: list[tuple[str, str | None]] = []
        self.pools: deque[Pool] = deque()
        self.logger = get_run_logger()
        self.encoder: ThreadPoolTaskRunner = ThreadPoolTaskRunner(max_workers=1)
        self.store: ThreadPoolTaskRunner = ThreadPoolTaskRunner(max_workers=1)
        self.releaser = FreedMemoryReleaser()

    def __enter__(self) -> Writer:
        self.encoder.__enter__()
        self.store.__enter__()
        self.releaser.start()  # freed memory goes back to the OS while the run writes
        return self

    def __exit__(self, *exc: object) -> None:
        """Cancel what has not started (writes first, so none starts once its encode ends), then wait for what runs:
        no write starts after the run reported its end."""
        for pool in self.pools:
            for future in (pool.written, pool.records, pool.embedded):
                if future is not None:
                    cast(PrefectConcurrentFuture, future).wrapped_future.cancel()  # only those not started yet
        try:
            self.store.__exit__(*exc)
        finally:
            try:
                self.encoder.__exit__(*exc)
            finally:
                self.releaser.stop()

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
            self.records.append(manifest_record(p, self.profile, previous, DocumentStatus.FAILURE, p.stage, p.error))
        elif p.stage in (Stage.CHUNK, Stage.DISCOVER) or previous is None:
            # Skipped after reading it (empty, or a format this installation cannot read): recorded, so the next run
            # finds it unchanged instead of parsing it again (a changed fingerprint, e.g. OCR installed, re-checks it).
            # A document that became empty also loses its old chunks; any other skip keeps a previous version.
            self.records.append(manifest_record(p, self.profile, previous, DocumentStatus.SKIPPED, p.stage, p.error))
            if previous is not None:
                self.replace.append((document_id(p.document.source_uri, p.document.path), None))
        self.run.record(outcome_of(p))

    def add_embedded(self, pool: EmbeddedPool) -> None:
        """A pool parsed, chunked and embedded elsewhere (a Dask worker): written as it is, with the records of the
        documents gathered meanwhile (``add``: those skipped or failed before embedding)."""
        for d in [*pool.docs, *(d for d, _ in pool.failed)]:
            for stage, seconds in d.timings.items():
                self.metrics.observe_stage(stage, seconds)
        self.collect()
        if pool.docs or pool.failed:
            self._make_room()
            paths = [d.document.path for d in [*pool.docs, *(d for d, _ in pool.failed)]]
            known = {path: self.known[path] for path in paths if path in self.known}
            written = self.store.submit(self.stages.write, {
                "location": self.location, "collection": self.collection, "pool": quote(pool),
                "profile": self.profile, "known": quote(known), "batch_size": self.options.store.upsert_batch_size})
            self.pools.append(Pool(written=written, encoded=pool))
        self.flush()  # the records gathered meanwhile

    def encoder_busy(self) -> bool:
        """A pool is still on its way (encoded, or written: the store and the encoder share the CPU): the gathering
        pool keeps growing meanwhile, so an encoder-bound run encodes fewer, larger pools, which pad less."""
        return any(p.embedded is not None and not p.done() for p in self.pools)

    def maybe_flush(self, idle: bool = False) -> None:
        """Hand the pending pool to the encoder when it is full, or when the encoder is idle and the pool has 64
        chunks (any, when no document arrived for a while: ``idle``); record the pools that finished meanwhile."""
        self.collect()
        if pool_ready(self.pending_chunks, self.options.embed.pool_size, encoder_busy=self.encoder_busy(), idle=idle):
            self.flush()

    def flush(self) -> None:
        """Submit the pending pool (encode, then write) and the records of skipped or failed documents."""
        docs, self.pending, self.pending_chunks = self.pending, [], 0
        if docs:
            self._make_room()
            embedded = self.encoder.submit(self.stages.embed, {
                "model": self.model, "docs": quote(docs), "batch_size": self.options.embed.batch_size})
            known = {d.document.path: self.known[d.document.path] for d in docs if d.document.path in self.known}
            written = self.store.submit(self.stages.write, {
                "location": self.location, "collection": self.collection, "pool": opaque(embedded),
                "profile": self.profile, "known": quote(known), "batch_size": self.options.store.upsert_batch_size})
            self.pools.append(Pool(embedded=embedded, written=written))
        if self.records or self.replace:
            records, replace, self.records, self.replace = self.records, self.replace, [], []
            self.pools.append(Pool(records=self.store.submit(self.stages.finalize, {
                "location": self.location, "collection": self.collection, "replace": quote(replace),
                "records": quote(records)})))

    def _make_room(self) -> None:
        """Wait while pools pile up: at most MAX_ENCODING waiting for the encoder, MAX_IN_FLIGHT unwritten."""
        while len(encoding := [p.embedded for p in self.pools if p.embedded and not finished(p.embedded)]) \
                >= self.MAX_ENCODING:
            encoding[0].wait()
        while len(self.pools) >= self.MAX_IN_FLIGHT:
            self.collect(wait=True, limit=1)

    def collect(self, wait: bool = False, limit: int | None = None) -> None:
        """Record the pools that finished, in order (``wait``: wait for the oldest ``limit`` pools)."""
        settled = 0
        while self.pools and (limit is None or settled < limit):
            if not wait and not self.pools[0].done():
                return
            self._settle(self.pools.popleft())
            settled += 1

    def finish(self) -> None:
        """The end of the run: everything written and recorded, or the first error raised."""
        self.flush()
        self.collect(wait=True)
        self.flush()  # the records of documents whose encode or write failed last
        self.collect(wait=True)

    def _settle(self, pool: Pool) -> None:
        if pool.records is not None:
            self.run.result.chunks.deleted += pool.records.result()
            return
        assert pool.written is not None  # a pool without records is written
        # A model that cannot be used stops the run here.
        embedded: EmbeddedPool | None = pool.embedded.result() if pool.embedded is not None else pool.encoded
        assert embedded is not None
        self.metrics.observe_embed(embedded.chunks, embedded.seconds)
        self.run.result.chunks.embedded += embedded.chunks
        try:
            written: WrittenPool = pool.written.result()
        except ConfigurationError:
            raise
        except DocingestError as exc:  # the store failed after its retries: the documents fail, old versions stay
            for d in embedded.docs:
                self._fail(d, Stage.UPSERT, str(exc))
            for d, error in embedded.failed:
                self._fail(d, Stage.EMBED, error)
            return
        self.metrics.observe_stage("upsert", written.seconds)
        self.run.result.chunks.upserted += written.upserted
        self.run.result.chunks.deleted += written.deleted
        for d in embedded.docs:
            self.run.record(outcome_of(d))
        for d, error in embedded.failed:  # their failure record was written with the pool
            self.run.record(outcome_of(d, DocumentStatus.FAILURE, Stage.EMBED, error))

    def _fail(self, d: PreparedDocument, stage: Stage, error: str) -> None:
        self.records.append(manifest_record(d, self.profile, self.known.get(d.document.path), DocumentStatus.FAILURE,
                                            stage, error))
        self.run.record(outcome_of(d, DocumentStatus.FAILURE, stage, error))
