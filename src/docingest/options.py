"""One options model per stage, composed into :class:`IngestOptions` (the flow's ``options`` parameter).

Docling's own option classes are mapped inside ``core/parse.py`` and never appear here.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PdfMode(str, Enum):
    """How PDFs are converted."""

    AUTO = "auto"
    FAST = "fast"
    ACCURATE = "accurate"


class OcrMode(str, Enum):
    """Whether images and PDF pages without a usable text layer are read with OCR."""

    AUTO = "auto"
    OFF = "off"
    FORCE = "force"


class SyncMode(str, Enum):
    """Whether documents that vanished from the source are removed from the collection."""

    INCREMENTAL = "incremental"
    FULL = "full"


class Isolation(str, Enum):
    """Where documents are parsed."""

    PROCESS = "process"
    NONE = "none"


class _Options(BaseModel):
    """Options are frozen: a run's resolved options are copies (``model_copy(update=...)``), never changed in
    place."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceOptions(_Options):
    """Which files of a source are considered."""

    include: list[str] = Field(
        default_factory=lambda: ["**/*"], description="Glob patterns (relative to the source root) to include."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns to leave out. Hidden files and folders are always left out."
    )
    git_ref: str | None = Field(default=None, description="Git sources: branch, tag or commit (default: HEAD).")
    git_path: str | None = Field(default=None, description="Git sources: folder inside the repository.")
    follow_symlinks: bool = Field(
        default=False,
        description="Local folders: also read files that symbolic links lead to outside the source root. Off by "
        "default: such links are skipped ('symlink points outside the source'), so nobody who can drop a link into "
        "the folder can publish other files. Links inside the root are always followed (once).",
    )


class ParseOptions(_Options):
    """How documents are converted with Docling."""

    pdf_mode: PdfMode = Field(
        default=PdfMode.AUTO,
        description=(
            "auto: accurate when Docling's layout models are installed locally, else fast. "
            "fast: text layer only, no ML models. accurate: Docling's standard PDF pipeline (layout and tables)."
        ),
    )
    ocr: OcrMode = Field(
        default=OcrMode.AUTO,
        description="auto: read images (PNG, JPEG, TIFF, WebP, BMP) and PDF pages without a usable text layer with "
        "Tesseract when it is installed; force: OCR every PDF page too (for garbage text layers); off: skip images "
        "and keep PDFs' text layers only.",
    )
    ocr_lang: str = Field(default="eng", description="Tesseract language codes, e.g. 'eng+deu'.")
    ocr_page_timeout_s: float = Field(
        default=60.0, gt=0, description="Time limit for reading one page with OCR; a page past it fails alone, and "
        "each page read gives the document's own time limit that long again.")
    ocr_dpi: int = Field(default=300, ge=72, le=600, description="Resolution PDF pages are rendered at for OCR.")
    max_file_size_mb: float = Field(default=200.0, gt=0, description="Larger files are skipped with a reason.")
    timeout_s: float = Field(
        default=120.0, gt=0, description="Per-document time limit for parse and chunk; past it the document fails."
    )
    max_memory_mb: int = Field(
        default=4096, ge=256, description="Per-document memory limit (resident set of the parse worker process)."
    )
    isolation: Isolation = Field(
        default=Isolation.PROCESS,
        description=(
            "process: parse in worker processes that are killed and replaced on a timeout, crash or memory blow-up. "
            "none: parse in the flow's own process (no limits; for debugging)."
        ),
    )
    recycle_after: int = Field(default=200, ge=1, description="Replace a parse worker after this many documents.")


class ChunkOptions(_Options):
    """How converted documents are split (Docling HybridChunker)."""

    max_tokens: int | None = Field(
        default=None,
        gt=8,
        description="Chunk size in tokens of the embedding model. Default and upper bound: the model's max sequence length.",
    )
    merge_peers: bool = Field(default=True, description="Merge undersized neighbouring chunks with the same headings.")
    chunker: str | None = Field(
        default=None, description="A docingest.chunkers plugin to use instead of Docling's HybridChunker."
    )
    enrichers: list[str] = Field(
        default_factory=list,
        description="docingest.enrichers plugins run after chunking, in this order; each adds payload fields.",
    )


class EmbedBackend(str, Enum):
    """How the embedding model runs."""

    TORCH = "torch"
    INT8 = "int8"


class EmbedOptions(_Options):
    """How chunks are embedded."""

    model: str | None = Field(
        default=None,
        description="sentence-transformers model name or path. Default: settings (DOCINGEST_EMBED_MODEL), the bundled all-MiniLM-L6-v2.",
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Chunks per forward pass of the model.")
    pool_size: int = Field(
        default=1024, ge=1, le=100_000,
        description="Most chunks (across documents) gathered for one encode call. The model sorts a call's chunks by "
        "length, so larger pools pad less (docs/performance.md, Pool size). Encoding starts as soon as 64 chunks are "
        "ready and the encoder is idle; while it works, the next pool grows up to this size.",
    )
    backend: EmbedBackend = Field(
        default=EmbedBackend.TORCH,
        description="torch: fp32 (CUDA when present). int8: torch dynamic int8 quantization of the Linear layers, "
        "CPU only; faster on CPU, slightly different vectors (part of the settings fingerprint).",
    )


class StoreOptions(_Options):
    """How points are written to Qdrant. Where Qdrant lives comes from settings or a block, not from here."""

    upsert_batch_size: int = Field(default=256, ge=1, le=10000, description="Points per upsert request.")
    bm25_language: str = Field(
        default="english",
        description="Language of each chunk's BM25 sparse vector (tokenizer, stopwords, stemmer), for bm25 and "
        "hybrid search; 'none' stores dense vectors only. Changing it re-encodes the sparse vectors at the next "
        "sync, never the dense ones.",
    )


class Preset(str, Enum):
    """A coherent set of throughput and memory knobs; explicitly given options win over it."""

    DEFAULT = "default"
    HIGH_THROUGHPUT = "high-throughput"
    MEMORY_EFFICIENT = "memory-efficient"


def _cpus() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def preset_values(preset: Preset) -> dict[str, dict | object]:
    """The option values a preset sets (nested like IngestOptions). Measured effect: README, Presets."""
    if preset is Preset.HIGH_THROUGHPUT:
        return {
            "workers": max(2, _cpus()),
            "window": 128,
            # Batches of 64 (the default): int8 encoded 2,132 generated chunks in 65-66 s at 64 and 72-78 s at 128,
            # 2,528 short abstracts in 67-72 s and 78-85 s (docs/performance.md, fourth round).
            "embed": {"backend": EmbedBackend.INT8},
            "store": {"upsert_batch_size": 1024},
            "parse": {"recycle_after": 500},
        }
    if preset is Preset.MEMORY_EFFICIENT:
        return {
            "workers": 1,
            "window": 4,
            "embed": {"batch_size": 16, "pool_size": 64},
            "store": {"upsert_batch_size": 64},
            "parse": {"recycle_after": 25, "max_memory_mb": 2048},
        }
    return {}


class IngestOptions(_Options):
    """All options of an ingest run."""

    preset: Preset | None = Field(
        default=None,
        description="default | high-throughput | memory-efficient: sets workers, window, batch sizes and the embedding "
        "backend together. Options given explicitly win over the preset.",
    )

    source: SourceOptions = Field(default_factory=SourceOptions)
    parse: ParseOptions = Field(default_factory=ParseOptions)
    chunk: ChunkOptions = Field(default_factory=ChunkOptions)
    embed: EmbedOptions = Field(default_factory=EmbedOptions)
    store: StoreOptions = Field(default_factory=StoreOptions)
    window: int = Field(
        default=32, ge=1, le=4096, description="Documents in flight at once (bounds memory on large sources)."
    )
    workers: int = Field(default=2, ge=1, le=64, description="Documents parsed at the same time.")
    docs_per_task: int | None = Field(
        default=None, ge=1, le=256,
        description="Documents per parse-and-chunk task run. Default: 1 (a task run, cache entry and UI state per "
        "document) when fewer than 64 documents need parsing, else up to 8 (a quarter of the window at most). A task "
        "run costs ~15 ms of orchestration; batches cut that, with coarser caching: a batch is cached as a whole. On a "
        "Dask cluster: documents per parse-chunk-embed pool (default: about 4 pools per worker thread, at most 128).",
    )
    mode: SyncMode = Field(
        default=SyncMode.INCREMENTAL,
        description="incremental: never delete. full: also remove documents that vanished from this source's scope.",
    )
    max_delete_ratio: float = Field(
        default=0.5, ge=0, le=1, description="Refuse a full sync that would delete more than this share of the scope."
    )
    force: bool = Field(default=False, description="Delete even past max_delete_ratio.")
    delete_guard_of: Literal["filters", "source"] = Field(
        default="filters", description="What max_delete_ratio is a share of: the documents the run's include/exclude "
        "filters select (filters), or every document of the source (source: the watch's batches, narrowed to the "
        "changed paths, where deleting the one file a batch names is not a 100 % deletion).",
    )
    max_doc_attempts: int = Field(
        default=3, ge=1, description="A document that failed this many times in a row is dead-lettered until it changes."
    )
    max_failure_ratio: float = Field(
        default=0.5, gt=0, le=1, description="Stop the run when more than this share of processed documents failed..."
    )
    breaker_min_docs: int = Field(default=20, ge=1, description="...after at least this many documents were processed.")

    def resolved(self) -> IngestOptions:
        """A copy with the preset's values filled into every option that was not set explicitly."""
        if self.preset is None:
            return self.model_copy(deep=True)
        data = self.model_dump()
        for key, value in preset_values(self.preset).items():
            if isinstance(value, dict):
                section = getattr(self, key)
                for field, v in value.items():
                    if field not in section.model_fields_set:
                        data[key][field] = v
            elif key not in self.model_fields_set:
                data[key] = value
        return IngestOptions.model_validate(data)
