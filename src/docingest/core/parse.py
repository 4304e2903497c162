"""Parse: one document file -> a DoclingDocument, with Docling.

Docling's option classes are mapped here and nowhere else. Converters are built once per thread and options.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from docingest.exceptions import ConfigurationError, ParseError, UnsupportedDocumentError
from docingest.options import OcrMode, ParseOptions, PdfMode

if TYPE_CHECKING:
    from docling.document_converter import DocumentConverter
    from docling_core.types.doc import DoclingDocument

log = logging.getLogger(__name__)

# Extensions Docling converts here without ML models (the format is confirmed by Docling on open).
OFFLINE_EXTENSIONS: dict[str, str] = {
    **dict.fromkeys(["docx", "dotx", "docm", "dotm"], "docx"),
    **dict.fromkeys(["pptx", "potx", "ppsx", "pptm", "potm", "ppsm"], "pptx"),
    **dict.fromkeys(["xlsx", "xlsm"], "xlsx"),
    **dict.fromkeys(["html", "htm", "xhtml"], "html"),
    **dict.fromkeys(["md", "markdown"], "md"),
    **dict.fromkeys(["adoc", "asciidoc", "asc"], "asciidoc"),
    "csv": "csv",
    **dict.fromkeys(["xml", "nxml"], "xml"),
    **dict.fromkeys(["tex", "latex"], "latex"),
    "vtt": "vtt",
    **dict.fromkeys(["odt", "ods", "odp"], "odf"),
    "txt": "txt",
    "pdf": "pdf",
}
IMAGE_EXTENSIONS = {"png", "jpg", "jpeg", "tif", "tiff", "webp", "bmp"}
LEGACY_OFFICE_EXTENSIONS = {"doc", "ppt", "xls", "rtf"}


@dataclass(frozen=True)
class ParsedDocument:
    """A converted document and the parser that produced it (recorded in the payload)."""

    document: DoclingDocument
    parser: str
    pages: int


def extension(path: str | Path) -> str:
    return Path(path).suffix.lower().lstrip(".")


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def libreoffice_available() -> bool:
    return shutil.which("soffice") is not None or shutil.which("libreoffice") is not None


def _model_bases() -> list[Path]:
    from docling.datamodel.settings import settings as docling_settings

    bases = [docling_settings.artifacts_path, docling_settings.cache_dir / "models"]
    if env := os.environ.get("DOCLING_ARTIFACTS_PATH"):
        bases.insert(0, Path(env))
    return [Path(b) for b in bases if b]


@lru_cache(maxsize=1)
def accurate_models_status() -> tuple[bool, str]:
    """Whether Docling's standard PDF pipeline can run here (ML packages and layout model on disk), and why not."""
    try:
        import docling_ibm_models  # noqa: F401
    except ImportError:
        return False, "docling-ibm-models is not installed (pip install 'docingest[accurate]')"
    from docling.datamodel.layout_model_specs import DOCLING_LAYOUT_HERON

    folder = DOCLING_LAYOUT_HERON.repo_id.replace("/", "--")
    for base in _model_bases():
        if (base / folder).is_dir():
            return True, f"layout models found in {base}"
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(DOCLING_LAYOUT_HERON.repo_id, local_files_only=True)
        return True, "layout models found in the Hugging Face cache"
    except Exception:  # noqa: BLE001 - any failure means "not available offline"
        return False, "Docling layout models not found locally (run `docling-tools models download`)"


def resolve_pdf_mode(mode: PdfMode) -> PdfMode:
    """auto -> accurate or fast (logged once); accurate without models -> ConfigurationError."""
    available, why = accurate_models_status()
    if mode is PdfMode.AUTO:
        resolved = PdfMode.ACCURATE if available else PdfMode.FAST
        _log_auto_once(resolved, why)
        return resolved
    if mode is PdfMode.ACCURATE and not available:
        raise ConfigurationError(f"--pdf-mode accurate needs Docling's PDF models: {why}")
    return mode


@lru_cache(maxsize=4)
def _log_auto_once(resolved: PdfMode, why: str) -> None:
    log.info("pdf-mode auto: using %s PDF conversion (%s)", resolved.value, why)


def resolve_ocr(mode: OcrMode) -> bool:
    return mode is OcrMode.AUTO and tesseract_available()


_local = threading.local()


def _converter(pdf_mode: PdfMode) -> DocumentConverter:
    """One converter per thread and PDF mode: Docling pipelines are heavy to build and not shared across threads."""
    cache = _local.__dict__.setdefault("converters", {})
    if pdf_mode not in cache:
        cache[pdf_mode] = _build_converter(pdf_mode)
    return cache[pdf_mode]


def _build_converter(pdf_mode: PdfMode) -> DocumentConverter:
    from docling.datamodel.base_models import InputFormat
    from docling.document_converter import DocumentConverter, NativePdfFormatOption, PdfFormatOption

    if pdf_mode is PdfMode.ACCURATE:
        from docling.datamodel.pipeline_options import PdfPipelineOptions

        opts = PdfPipelineOptions(do_ocr=False, do_table_structure=True)
        pdf_option = PdfFormatOption(pipeline_options=opts)
    else:
        from docling.datamodel.pipeline_options import NativePdfPipelineOptions

        pdf_option = NativePdfFormatOption(pipeline_options=NativePdfPipelineOptions(parser_threads=1))
    allowed = [f for f in InputFormat if f not in (InputFormat.IMAGE, InputFormat.AUDIO, InputFormat.VIDEO)]
    return DocumentConverter(allowed_formats=allowed, format_options={InputFormat.PDF: pdf_option})


def check_supported(path: str | Path, options: ParseOptions) -> None:
    """Raise UnsupportedDocumentError (skip, with the reason) for a file this installation cannot read."""
    from docingest.plugins import parser_for

    ext = extension(path)
    if ext in OFFLINE_EXTENSIONS or parser_for(ext) is not None:
        return
    if ext in IMAGE_EXTENSIONS:
        if options.ocr is OcrMode.OFF:
            raise UnsupportedDocumentError("image skipped: OCR is off (--ocr off)")
        if not tesseract_available():
            raise UnsupportedDocumentError("image skipped: no OCR engine (install Debian's tesseract-ocr)")
        return
    if ext in LEGACY_OFFICE_EXTENSIONS:
        if libreoffice_available():
            return
        raise UnsupportedDocumentError(f"legacy .{ext} skipped: converting it needs LibreOffice (soffice)")
    raise UnsupportedDocumentError(f"unsupported file type: {('.' + ext) if ext else 'no extension'}")


def parse_document(path: Path, options: ParseOptions, pdf_mode: PdfMode | None = None) -> ParsedDocument:
    """Convert one file. Raises UnsupportedDocumentError (skip) or ParseError (failure), never returns partial."""
    check_supported(path, options)
    size_mb = path.stat().st_size / 1e6
    if size_mb > options.max_file_size_mb:
        raise UnsupportedDocumentError(f"file too large: {size_mb:.1f} MB > {options.max_file_size_mb} MB")
    ext = extension(path)
    from docingest.plugins import parser_for

    if (plugin := parser_for(ext)) is not None:
        return _plugin_parse(plugin, path, options)
    if ext in IMAGE_EXTENSIONS:
        return _ocr_image(path, options)
    mode = pdf_mode or resolve_pdf_mode(options.pdf_mode)
    converter = _converter(mode)
    source: Path | object = path
    if ext == "txt":  # plain text is read as Markdown (Docling has no plain-text reader)
        from io import BytesIO

        from docling.datamodel.base_models import DocumentStream

        source = DocumentStream(name=f"{path.stem}.md", stream=BytesIO(path.read_bytes()))
    try:
        result = converter.convert(source, raises_on_error=False)
    except Exception as exc:  # noqa: BLE001 - Docling raises many types for bad input
        raise ParseError(f"{type(exc).__name__}: {exc}".strip()) from exc
    status = result.status.value
    if status not in ("success", "partial_success") or result.document is None:
        reasons = "; ".join(e.error_message for e in result.errors) or f"conversion {status}"
        raise ParseError(f"Docling could not convert the file: {reasons}")
    parser = f"docling-{mode.value}" if ext == "pdf" else "docling"
    return ParsedDocument(document=result.document, parser=parser, pages=len(result.document.pages))


def _plugin_parse(plugin, path: Path, options: ParseOptions) -> ParsedDocument:
    """A parser plugin's DoclingDocument, or its Markdown converted by Docling."""
    from docling_core.types.doc import DoclingDocument

    try:
        produced = plugin.obj.parse(path, options)
    except UnsupportedDocumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - the plugin's failure is this document's failure, naming the plugin
        raise ParseError(f"parser plugin {plugin.entry_name!r} failed: {type(exc).__name__}: {exc}") from exc
    parser = f"plugin:{plugin.name}=={plugin.version}"
    if isinstance(produced, DoclingDocument):
        return ParsedDocument(document=produced, parser=parser, pages=len(produced.pages))
    if not isinstance(produced, str):
        raise ParseError(f"parser plugin {plugin.entry_name!r} returned {type(produced).__name__}, "
                         "not a DoclingDocument or Markdown text")
    from io import BytesIO

    from docling.datamodel.base_models import DocumentStream

    result = _converter(PdfMode.FAST).convert(
        DocumentStream(name=f"{path.stem}.md", stream=BytesIO(produced.encode())), raises_on_error=False)
    if result.document is None or result.status.value not in ("success", "partial_success"):
        raise ParseError(f"parser plugin {plugin.entry_name!r}: its Markdown could not be read")
    return ParsedDocument(document=result.document, parser=parser, pages=0)


def _ocr_image(path: Path, options: ParseOptions) -> ParsedDocument:
    """Read an image with the Tesseract CLI into a DoclingDocument (one paragraph per text block)."""
    from docling_core.types.doc import DocItemLabel, DoclingDocument

    try:
        proc = subprocess.run(
            ["tesseract", str(path), "stdout", "-l", options.ocr_lang],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ParseError("OCR timed out after 300 s") from exc
    if proc.returncode != 0:
        raise ParseError(f"tesseract failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    doc = DoclingDocument(name=path.stem)
    for block in proc.stdout.split("\n\n"):
        text = " ".join(line.strip() for line in block.splitlines() if line.strip())
        if text:
            doc.add_text(label=DocItemLabel.PARAGRAPH, text=text)
    return ParsedDocument(document=doc, parser="tesseract", pages=1)
