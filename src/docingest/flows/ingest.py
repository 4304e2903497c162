"""The ingest flow: discover -> plan -> parse+chunk (per document) -> embed (batched across documents) -> upsert."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

from docingest.core import progress
from docingest.core.embed import load_model
from docingest.core.ids import document_id
from docingest.core.parse import accurate_models_status, check_supported
from docingest.core.pipeline import build_points, manifest_record
from docingest.core.plan import Profile, classify, resolve_profile
from docingest.core.sources import open_source
from docingest.core.store import QdrantLocation, QdrantStore
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
from docingest.exceptions import DocingestError, UnsupportedDocumentError
from docingest.options import IngestOptions, PdfMode
from docingest.settings import get_settings
from docingest.tasks.embed import embed_batch_task
from docingest.tasks.prepare import prepare_document_task
from docingest.tasks.store import ensure_collection_task, finalize_documents_task, upsert_points_task


class QdrantTarget(BaseModel):
    """Override where Qdrant lives for one run (no secrets here: API keys come from settings or a block)."""

    url: str | None = Field(default=None, description="Qdrant server URL.")
    path: str | None = Field(default=None, description="Folder for Qdrant local mode.")


def resolve_location(qdrant: QdrantTarget | None = None, qdrant_block: str | None = None) -> QdrantLocation:
    """Flow override > block > settings (DOCINGEST_QDRANT_URL / DOCINGEST_QDRANT_PATH) > .docingest/qdrant."""
    settings = get_settings()
    if qdrant_block:
        from docingest.blocks.qdrant import QdrantConnection

        location = QdrantConnection.load(qdrant_block).location()
    else:
        location = QdrantLocation(
            url=settings.qdrant_url,
            path=settings.resolved_qdrant_path(),
            api_key=settings.qdrant_api_key,
            timeout=settings.qdrant_timeout,
        )
    if qdrant and qdrant.url:
        location = location.model_copy(update={"url": qdrant.url, "path": None})
    elif qdrant and qdrant.path:
        location = location.model_copy(update={"url": None, "path": Path(qdrant.path)})
    return location


def preflight(source: str, options: IngestOptions, qdrant: QdrantTarget | None = None,
              qdrant_block: str | None = None) -> None:
    """Check configuration before a run starts (raises ConfigurationError / StoreError): source, PDF mode, Qdrant."""
    from docingest.core.parse import resolve_pdf_mode

    open_source(source, options.source)
    resolve_pdf_mode(options.parse.pdf_mode)
    QdrantStore(resolve_location(qdrant, qdrant_block)).collection_exists("docingest-preflight")


class _Run:
    """Accumulates per-document outcomes into the typed result and reports progress."""

    def __init__(self, collection: str, source: str, total: int) -> None:
        self.result = IngestResult(collection=collection, source=source)
        self.result.documents.seen = total
        self.total = total
        self.done = 0

    def record(self, outcome: DocumentOutcome) -> None:
        counts = self.result.documents
        self.result.outcomes.append(outcome)
        if outcome.status is DocumentStatus.SKIPPED:
            counts.skipped += 1
            self.result.skipped.append(SkippedItem(source=outcome.source, reason=outcome.error or ""))
        else:
            kind = outcome.change or ChangeKind.NEW
            setattr(counts, kind.value, getattr(counts, kind.value) + 1)
        if outcome.status is DocumentStatus.FAILURE:
            counts.failed += 1
            stage = outcome.stage.value if outcome.stage else "unknown"
            self.result.failures.append(FailureItem(source=outcome.source, stage=stage, error=outcome.error or ""))
        self.done += 1
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
    )


class _Writer:
    """Buffers prepared documents and writes them in batches: embed -> upsert -> drop old versions + manifest."""

    def __init__(self, run: _Run, location: QdrantLocation, collection: str, profile: Profile,
                 options: IngestOptions, model, known: dict[str, ManifestRecord]) -> None:
        self.run, self.location, self.collection = run, location, collection
        self.profile, self.options, self.model, self.known = profile, options, model, known
        self.pending: list[PreparedDocument] = []
        self.records: list[ManifestRecord] = []
        self.replace: list[tuple[str, str | None]] = []
        self.logger = get_run_logger()

    def add(self, p: PreparedDocument) -> None:
        previous = self.known.get(p.document.path)
        if p.status is DocumentStatus.SUCCESS:
            self.pending.append(p)
            if sum(len(d.chunks) for d in self.pending) >= self.options.store.upsert_batch_size:
                self.flush()
            return
        if p.status is DocumentStatus.FAILURE:
            # The old version (if any) stays searchable; the failure is recorded so the next run retries it.
            self.records.append(manifest_record(p, self.profile, previous, DocumentStatus.FAILURE, p.stage, p.error))
            self.logger.warning("failed %s at %s: %s", p.document.path, p.stage.value if p.stage else "?", p.error)
        elif p.stage is Stage.CHUNK and previous is not None:
            # Now empty: its old chunks no longer describe it.
            self.replace.append((document_id(p.document.source_uri, p.document.path), None))
        self.run.record(_outcome(p))

    def flush(self) -> None:
        docs, self.pending = self.pending, []
        if docs:
            self._write(docs)
        if self.records or self.replace:
            records, replace = self.records, self.replace
            self.records, self.replace = [], []
            self.run.result.chunks.deleted += finalize_documents_task(
                self.location, self.collection, quote(replace), quote(records)
            )

    def _embed(self, docs: list[PreparedDocument]):
        texts = [c.embed_text for d in docs for c in d.chunks]
        vectors = embed_batch_task(self.model, quote(texts), self.options.embed.batch_size, n_docs=len(docs))
        self.run.result.chunks.embedded += len(texts)
        out, start = [], 0
        for d in docs:
            out.append(vectors[start : start + len(d.chunks)])
            start += len(d.chunks)
        return out

    def _write(self, docs: list[PreparedDocument]) -> None:
        try:
            per_doc = self._embed(docs)
        except DocingestError:
            if len(docs) == 1:
                raise
            # Isolate the document that breaks the batch: embed one by one.
            ok, per_doc = [], []
            for d in docs:
                try:
                    per_doc.extend(self._embed([d]))
                    ok.append(d)
                except DocingestError as exc:
                    self._fail(d, Stage.EMBED, str(exc))
            docs = ok
        points = [pt for d, vecs in zip(docs, per_doc, strict=True) for pt in build_points(d, vecs, self.profile)]
        try:
            self.run.result.chunks.upserted += upsert_points_task(
                self.location, self.collection, quote(points), self.options.store.upsert_batch_size
            )
        except DocingestError as exc:
            for d in docs:
                self._fail(d, Stage.UPSERT, str(exc))
            return
        records = [manifest_record(d, self.profile, self.known.get(d.document.path), DocumentStatus.SUCCESS)
                   for d in docs]
        replace = [(r.doc_id, r.version) for r in records]
        self.run.result.chunks.deleted += finalize_documents_task(
            self.location, self.collection, quote(replace), quote(records)
        )
        for d in docs:
            self.run.record(_outcome(d))

    def _fail(self, d: PreparedDocument, stage: Stage, error: str) -> None:
        self.records.append(manifest_record(d, self.profile, self.known.get(d.document.path),
                                            DocumentStatus.FAILURE, stage, error))
        self.run.record(_outcome(d, DocumentStatus.FAILURE, stage, error))


@flow(
    name="ingest-documents",
    task_runner=ThreadPoolTaskRunner(max_workers=2),
    validate_parameters=True,
    log_prints=True,
)
def ingest_documents(
    source: str,
    collection: str,
    options: IngestOptions | None = None,
    qdrant: QdrantTarget | None = None,
    qdrant_block: str | None = None,
) -> IngestResult:
    """Sync a folder of documents into a Qdrant collection.

    Unchanged documents (same bytes, same settings) are skipped without parsing; new and changed ones are parsed
    with Docling, chunked with HybridChunker, embedded in batches across documents and upserted. A document that
    fails is reported in the result and never stops the run.

    Args:
        source: Folder (or file) to ingest.
        collection: Qdrant collection to keep in sync.
        options: Parse, chunk, embed and store options.
        qdrant: Where Qdrant lives for this run; default from settings (DOCINGEST_QDRANT_URL / _PATH).
        qdrant_block: Name of a saved QdrantConnection block to use instead of settings.
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    started = time.monotonic()
    options = options or IngestOptions()
    settings = get_settings()

    # 1. Where things live, and what shapes the output (model, PDF mode, chunk size -> fingerprint).
    location = resolve_location(qdrant, qdrant_block)
    src = open_source(source, options.source)
    model = load_model(options.embed.model or settings.embed_model, settings.embed_device)
    profile = resolve_profile(options, model.info)
    ensure_collection_task(location, collection, model.info.dimension)
    if options.parse.pdf_mode is PdfMode.AUTO:
        available, why = accurate_models_status()
        logger.info("pdf-mode auto: PDFs use %s conversion (%s)", profile.pdf_mode.value, why)
    logger.info("ingesting %s into %r on %s (model %s, pdf-mode %s, %d-token chunks)", src.uri, collection,
                location.describe(), model.info.name, profile.pdf_mode.value, profile.max_tokens)

    # 2. Discover and plan every document before any work: hash each file, compare with the manifest.
    known = QdrantStore(location).manifest(collection, src.uri)
    documents = list(src.iter_documents())
    run = _Run(collection, src.uri, len(documents))
    run.result.flow_run_id = str(flow_run.get_id() or "")
    writer = _Writer(run, location, collection, profile, options, model, known)

    # 3. Parse+chunk new and changed documents in a bounded window; embed+upsert in batches as they finish.
    window: deque[PrefectFuture] = deque()
    for doc in documents:
        change = classify(doc, known.get(doc.path), profile)
        try:
            check_supported(doc.path, options.parse)
        except UnsupportedDocumentError as exc:
            run.record(DocumentOutcome(source=doc.uri, path=doc.path, status=DocumentStatus.SKIPPED,
                                       change=change, stage=Stage.DISCOVER, error=str(exc)))
            continue
        if change is ChangeKind.UNCHANGED:
            run.record(DocumentOutcome(source=doc.uri, path=doc.path, status=DocumentStatus.UNCHANGED,
                                       change=change, chunks=known[doc.path].chunks))
            continue
        window.append(prepare_document_task.submit(quote(src), doc, change, quote(profile), options, quote(model)))
        while len(window) >= options.window:
            writer.add(window.popleft().result())
    while window:
        writer.add(window.popleft().result())
    writer.flush()

    result = run.result
    result.duration_s = time.monotonic() - started
    d = result.documents
    logger.info("done in %.1fs: %d seen, %d new, %d changed, %d unchanged, %d skipped, %d failed; %d chunks upserted",
                result.duration_s, d.seen, d.new, d.changed, d.unchanged, d.skipped, d.failed, result.chunks.upserted)
    return result


if __name__ == "__main__":
    import sys

    print(ingest_documents(sys.argv[1], sys.argv[2]).model_dump_json(indent=2, exclude={"outcomes"}))
