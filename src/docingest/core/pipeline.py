"""Per-document stage logic that the tasks wrap: read -> parse -> chunk, then points and manifest records."""

from __future__ import annotations

import time
from typing import Any, Protocol

from docingest.core.chunk import chunk_document, enrich_chunks, make_chunker
from docingest.core.embed import LoadedModel
from docingest.core.ids import document_id, document_version, point_id
from docingest.core.parse import check_supported, parse_document
from docingest.core.plan import Profile
from docingest.core.sources import Source
from docingest.core.worker import WorkerConfig, get_pool
from docingest.datamodel import ChangeKind, DocumentStatus, ManifestRecord, PreparedDocument, SourceDocument, Stage
from docingest.exceptions import ChunkError, EnrichError, ParseError, SourceError, UnsupportedDocumentError
from docingest.options import IngestOptions, Isolation, OcrMode


class _Outcome(Protocol):
    """``prepare_document``'s ``outcome``: the document's PreparedDocument with this status (and more fields)."""

    def __call__(self, status: DocumentStatus, stage: Stage | None = None, error: str | None = None,
                 **kw: Any) -> PreparedDocument: ...


def prepare_document(
    source: Source,
    doc: SourceDocument,
    change: ChangeKind,
    profile: Profile,
    options: IngestOptions,
    model: LoadedModel,
) -> PreparedDocument:
    """Parse and chunk one document. Never raises for the document's own problems: they become its status."""

    def outcome(status: DocumentStatus, stage: Stage | None = None, error: str | None = None,
                **kw: Any) -> PreparedDocument:
        return PreparedDocument(document=doc, change=change, status=status, stage=stage, error=error, **kw)

    if doc.error:
        return outcome(DocumentStatus.FAILURE, Stage.READ, doc.error)
    if options.parse.isolation is Isolation.PROCESS:
        return _prepare_in_worker(source, doc, profile, options, model, outcome)
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        with source.local_path(doc) as path:
            timings["read"] = time.perf_counter() - started
            parsed = parse_document(path, options.parse, profile.pdf_mode)
            timings["parse"] = time.perf_counter() - started - timings["read"]
    except UnsupportedDocumentError as exc:
        return outcome(DocumentStatus.SKIPPED, Stage.PARSE, str(exc))
    except SourceError as exc:
        return outcome(DocumentStatus.FAILURE, Stage.READ, str(exc))
    except ParseError as exc:
        return outcome(DocumentStatus.FAILURE, Stage.PARSE, str(exc), timings=timings)
    try:
        started = time.perf_counter()
        chunks = chunk_document(parsed.document, make_chunker(model, options.chunk))
        timings["chunk"] = time.perf_counter() - started
    except ChunkError as exc:
        return outcome(DocumentStatus.FAILURE, Stage.CHUNK, str(exc), parser=parsed.parser, timings=timings)
    return _finish(outcome, parsed.parser, chunks, timings, doc, options, parsed.pages, parsed.warning)


def _finish(outcome: _Outcome, parser: str | None, chunks: list, timings: dict[str, float], doc: SourceDocument,
            options: IngestOptions, pages: int = 0, warning: str | None = None) -> PreparedDocument:
    if chunks and options.chunk.enrichers:
        try:
            started = time.perf_counter()
            enrich_chunks(chunks, doc.path, options.chunk.enrichers)
            timings["enrich"] = time.perf_counter() - started
        except EnrichError as exc:
            return outcome(DocumentStatus.FAILURE, Stage.ENRICH, str(exc), parser=parser, timings=timings)
    if not chunks:
        reason = "empty document: no text found (0 chunks)"
        if parser == "docling-fast":
            reason += ("; the PDF has no text layer (scanned?): install Tesseract (apt install tesseract-ocr) so its "
                       "pages are read with OCR" if options.parse.ocr is not OcrMode.OFF else
                       "; the PDF has no text layer (scanned?) and OCR is off (option parse.ocr)")
        elif warning:
            reason += f"; {warning}"
        return outcome(DocumentStatus.SKIPPED, Stage.CHUNK, reason, parser=parser, timings=timings)
    return outcome(DocumentStatus.SUCCESS, None, warning, parser=parser, chunks=chunks, pages=pages, timings=timings)


def _prepare_in_worker(source: Source, doc: SourceDocument, profile: Profile, options: IngestOptions,
                       model: LoadedModel, outcome: _Outcome) -> PreparedDocument:
    """Parse and chunk in a worker process under the document's time and memory limits."""
    config = WorkerConfig(
        parse=options.parse,
        chunk=options.chunk,
        pdf_mode=profile.pdf_mode,
        tokenizer_location=model.info.location,
        max_tokens=profile.max_tokens,
    )
    try:
        check_supported(doc.path, options.parse)
        started = time.perf_counter()
        with source.local_path(doc) as path:
            read_s = time.perf_counter() - started
            result = get_pool(config, options.workers).run(path)
    except UnsupportedDocumentError as exc:
        return outcome(DocumentStatus.SKIPPED, Stage.PARSE, str(exc))
    except SourceError as exc:
        return outcome(DocumentStatus.FAILURE, Stage.READ, str(exc))
    if result.kind == "skip":
        return outcome(DocumentStatus.SKIPPED, Stage(result.stage), result.error)
    timings = {"read": read_s, **(result.timings or {})}
    if result.kind == "fail":
        return outcome(DocumentStatus.FAILURE, Stage(result.stage), result.error, parser=result.parser,
                       timings=timings)
    return _finish(outcome, result.parser, result.chunks or [], timings, doc, options, result.pages, result.warning)


def build_points(prepared: PreparedDocument, vectors: Any, profile: Profile) -> list[dict[str, Any]]:
    """Qdrant points for a prepared document, ids from (source, path, version, chunk index)."""
    doc = prepared.document
    doc_id = document_id(doc.source_uri, doc.path)
    fp = profile.fingerprint_for(doc.path)
    version = document_version(doc.content_hash, fp)
    points = []
    sparse = None
    if profile.sparse_language:
        from docingest.core.sparse import SPARSE_VECTOR, encoder, sparse_text

        bm25 = encoder(profile.sparse_language)
        sparse = [{SPARSE_VECTOR: v} for v in bm25.documents([sparse_text(c.headings, c.text)
                                                                for c in prepared.chunks])]
    for n, (chunk, vector) in enumerate(zip(prepared.chunks, vectors, strict=True)):
        points.append(
            {
                "id": point_id(doc_id, version, chunk.chunk_index),
                "vector": vector,
                "payload": {
                    "doc_id": doc_id,
                    "source_uri": doc.source_uri,
                    "uri": doc.uri,
                    "path": doc.path,
                    "content_hash": doc.content_hash,
                    "version": version,
                    "fingerprint": fp,
                    "chunk_index": chunk.chunk_index,
                    "chunk_count": len(prepared.chunks),
                    "headings": chunk.headings,
                    "pages": chunk.pages,
                    "text": chunk.text,
                    "parser": prepared.parser,
                    "model": profile.model.name,
                    "model_backend": profile.model.backend,
                    "ingested_at": time.time(),
                    **({"sparse_model": f"bm25:{profile.sparse_language}"} if sparse else {}),
                    **chunk.extra,
                },
                **({"sparse": sparse[n]} if sparse else {}),
            }
        )
    return points


def manifest_record(
    prepared: PreparedDocument, profile: Profile, previous: ManifestRecord | None, status: DocumentStatus,
    stage: Stage | None = None, error: str | None = None,
) -> ManifestRecord:
    doc = prepared.document
    failed = status is DocumentStatus.FAILURE
    return ManifestRecord(
        doc_id=document_id(doc.source_uri, doc.path),
        source_uri=doc.source_uri,
        path=doc.path,
        uri=doc.uri,
        content_hash=doc.content_hash,
        fingerprint=profile.fingerprint_for(doc.path),
        version=document_version(doc.content_hash, profile.fingerprint_for(doc.path)),
        status=status,
        chunks=len(prepared.chunks) if status is DocumentStatus.SUCCESS else 0,
        stage=stage,
        error=error,
        attempts=((previous.attempts if previous and previous.status is DocumentStatus.FAILURE else 0) + 1)
        if failed
        else 0,
        updated_at=time.time(),
    )
