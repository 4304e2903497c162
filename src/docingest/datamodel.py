"""Typed records that move between stages and make up a run's result."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import pandas as pd


class DocumentStatus(str, Enum):
    """What happened to one document in a run."""

    SUCCESS = "success"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    FAILURE = "failure"


class Stage(str, Enum):
    """The pipeline stage a document outcome refers to."""

    DISCOVER = "discover"
    READ = "read"
    PARSE = "parse"
    CHUNK = "chunk"
    ENRICH = "enrich"
    EMBED = "embed"
    UPSERT = "upsert"


class ChangeKind(str, Enum):
    """How a document compares with what the collection holds for it."""

    NEW = "new"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


class SourceDocument(BaseModel):
    """One document found in a source. ``path`` is relative to the source root, with ``/`` separators."""

    source_uri: str = Field(description="URI of the source root, e.g. file:///data/docs.")
    path: str = Field(description="Path of the document relative to the source root.")
    uri: str = Field(description="Stable URI of the document itself.")
    size: int = Field(description="Size in bytes.")
    content_hash: str = Field(description="sha256 of the document's bytes, hex.")
    error: str | None = Field(default=None, description="Why the document could not be read, if it could not.")
    skip_reason: str | None = Field(
        default=None, description="Why the listing leaves this entry out without reading it (a symlink out of the "
        "source, a FIFO, a dangling link): reported as skipped, never opened.")


class Chunk(BaseModel):
    """One chunk of a document, ready to embed. ``text`` is what is stored; ``embed_text`` adds the headings."""

    chunk_index: int
    text: str
    embed_text: str
    headings: list[str] = Field(default_factory=list)
    pages: list[int] = Field(default_factory=list)
    token_count: int = 0
    extra: dict[str, Any] = Field(default_factory=dict, description="Payload fields added by enricher plugins.")


class PreparedDocument(BaseModel):
    """A document after parse and chunk, or the reason it went no further."""

    document: SourceDocument
    change: ChangeKind
    status: DocumentStatus
    stage: Stage | None = None
    error: str | None = None
    parser: str | None = None
    chunks: list[Chunk] = Field(default_factory=list)
    pages: int = Field(default=0, description="Pages as Docling counts them (PDF and image pages, slides, sheets); 0 "
                       "for flowing text (Markdown, HTML, Word).")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds spent in read, parse and chunk.")


class DocumentOutcome(BaseModel):
    """The final outcome of one document in a run."""

    source: str = Field(description="URI of the document.")
    path: str
    status: DocumentStatus
    change: ChangeKind | None = None
    stage: Stage | None = Field(default=None, description="Stage that failed or skipped the document.")
    error: str | None = Field(default=None, description="Reason for a failure or a skip.")
    chunks: int = 0
    pages: int = Field(default=0, description="Pages of an ingested document as Docling counts them (PDF and image "
                       "pages, slides, sheets); 0 for flowing text and for documents not ingested.")


class DocumentCounts(BaseModel):
    seen: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    skipped: int = 0


class ChunkCounts(BaseModel):
    embedded: int = 0
    upserted: int = 0
    deleted: int = 0
    sparse_added: int = Field(default=0, description="Stored chunks that gained a BM25 vector without re-embedding.")


class FailureItem(BaseModel):
    source: str
    stage: str
    error: str
    path: str = Field(default="", description="The document's path relative to its source.")


class SkippedItem(BaseModel):
    source: str
    reason: str
    path: str = Field(default="", description="The document's path relative to its source.")


class DeadLetterItem(BaseModel):
    source: str
    stage: str
    error: str
    attempts: int


class IngestResult(BaseModel):
    """What an ingest run did. ``to_json_dict()`` gives the CLI's ``--json`` contract."""

    collection: str
    source: str = ""
    documents: DocumentCounts = Field(default_factory=DocumentCounts)
    chunks: ChunkCounts = Field(default_factory=ChunkCounts)
    pages: int = Field(default=0, description="Pages of the documents this run ingested, as Docling counts them (PDF "
                       "and image pages, slides, sheets).")
    failures: list[FailureItem] = Field(default_factory=list)
    skipped: list[SkippedItem] = Field(default_factory=list)
    dead_letter: list[DeadLetterItem] = Field(
        default_factory=list, description="Documents that failed max_doc_attempts times and are not retried until they change."
    )
    deleted: list[str] = Field(default_factory=list, description="URIs of documents removed (full sync).")
    mode: str = "incremental"
    aborted: str | None = Field(default=None, description="Why the run stopped early (circuit breaker), if it did.")
    outcomes: list[DocumentOutcome] = Field(default_factory=list)
    duration_s: float = 0.0
    stage_seconds: dict[str, float] = Field(
        default_factory=dict, description="Seconds per stage summed over documents/batches (read, parse, chunk run "
        "in parallel workers, so their sum can exceed the wall time).")
    flow_run_id: str = ""

    @property
    def ok(self) -> bool:
        """True when no document failed."""
        return self.documents.failed == 0

    def to_dataframe(self) -> pd.DataFrame:
        """One row per document: source, path, status, change, stage, error, chunks (pandas)."""
        columns = ["source", "path", "status", "change", "stage", "error", "chunks"]
        rows = [{**o.model_dump(mode="json", include=set(columns))} for o in self.outcomes]
        return _dataframe(rows, columns)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "documents": self.documents.model_dump(),
            "chunks": self.chunks.model_dump(),
            "pages": self.pages,
            "failures": [f.model_dump() for f in self.failures],
            "skipped": [s.model_dump() for s in self.skipped],
            "dead_letter": [d.model_dump() for d in self.dead_letter],
            "mode": self.mode,
            "aborted": self.aborted,
            "duration_s": round(self.duration_s, 3),
            "stage_seconds": {k: round(v, 3) for k, v in sorted(self.stage_seconds.items())},
            "flow_run_id": self.flow_run_id,
        }


def _dataframe(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    try:
        import pandas as pd
    except ImportError as exc:  # pandas comes with Docling; this only fails in a trimmed environment
        raise ImportError("to_dataframe() needs pandas: pip install pandas") from exc
    return pd.DataFrame(rows, columns=columns)


class SearchHit(BaseModel):
    """One search result."""

    score: float
    source: str
    path: str
    chunk_index: int
    text: str
    headings: list[str] = Field(default_factory=list)
    pages: list[int] = Field(default_factory=list)


class ManifestRecord(BaseModel):
    """What the collection knows about one document of a source (kept in ``<collection>__manifest``)."""

    doc_id: str
    source_uri: str
    path: str
    uri: str
    content_hash: str
    fingerprint: str
    version: str
    status: DocumentStatus
    chunks: int = 0
    stage: Stage | None = None
    error: str | None = None
    attempts: int = 0
    updated_at: float = 0.0


class SearchResults(list):
    """Search hits, best first: a plain list of SearchHit with ``to_dataframe()``; ``mode`` says how they were found
    (dense, bm25 or hybrid) and ``note`` why it is not the one asked for, if so."""

    mode: str = "dense"
    note: str | None = None

    def __init__(self, hits: Iterable[SearchHit] = (), mode: str = "dense", note: str | None = None) -> None:
        super().__init__(hits)
        self.mode, self.note = mode, note

    def to_json_dict(self) -> dict:
        """``{"mode", "hits": [{score, source, path, chunk_index, text, headings}]}``: what ``docingest search
        --json`` prints and ``POST /api/v1/search`` answers."""
        return {"mode": self.mode,
                "hits": [h.model_dump(include={"score", "source", "path", "chunk_index", "text", "headings"})
                         for h in self]}

    def to_dataframe(self) -> pd.DataFrame:
        """One row per hit: score, source, path, chunk_index, headings, pages, text."""
        columns = ["score", "source", "path", "chunk_index", "headings", "pages", "text"]
        return _dataframe([h.model_dump(include=set(columns)) for h in self], columns)
