"""One options model per stage, composed into :class:`IngestOptions` (the flow's ``options`` parameter).

Docling's own option classes are mapped inside ``core/parse.py`` and never appear here.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class PdfMode(str, Enum):
    """How PDFs are converted."""

    AUTO = "auto"
    FAST = "fast"
    ACCURATE = "accurate"


class OcrMode(str, Enum):
    """Whether images are read with OCR."""

    AUTO = "auto"
    OFF = "off"


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceOptions(_Options):
    """Which files of a source are considered."""

    include: list[str] = Field(
        default_factory=lambda: ["**/*"], description="Glob patterns (relative to the source root) to include."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns to leave out. Hidden files and folders are always left out."
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
        description="auto: read images (PNG, JPEG, TIFF, WebP, BMP) with Tesseract when it is installed; off: skip them.",
    )
    ocr_lang: str = Field(default="eng", description="Tesseract language codes, e.g. 'eng+deu'.")
    max_file_size_mb: float = Field(default=200.0, gt=0, description="Larger files are skipped with a reason.")


class ChunkOptions(_Options):
    """How converted documents are split (Docling HybridChunker)."""

    max_tokens: int | None = Field(
        default=None,
        gt=8,
        description="Chunk size in tokens of the embedding model. Default and upper bound: the model's max sequence length.",
    )
    merge_peers: bool = Field(default=True, description="Merge undersized neighbouring chunks with the same headings.")


class EmbedOptions(_Options):
    """How chunks are embedded."""

    model: str | None = Field(
        default=None,
        description="sentence-transformers model name or path. Default: settings (DOCINGEST_EMBED_MODEL), the bundled all-MiniLM-L6-v2.",
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Chunks per encode call (across documents).")


class StoreOptions(_Options):
    """How points are written to Qdrant. Where Qdrant lives comes from settings or a block, not from here."""

    upsert_batch_size: int = Field(default=256, ge=1, le=10000, description="Points per upsert request.")


class IngestOptions(_Options):
    """All options of an ingest run."""

    source: SourceOptions = Field(default_factory=SourceOptions)
    parse: ParseOptions = Field(default_factory=ParseOptions)
    chunk: ChunkOptions = Field(default_factory=ChunkOptions)
    embed: EmbedOptions = Field(default_factory=EmbedOptions)
    store: StoreOptions = Field(default_factory=StoreOptions)
    window: int = Field(
        default=32, ge=1, le=4096, description="Documents in flight at once (bounds memory on large sources)."
    )
