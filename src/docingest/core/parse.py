"""Parse: one document file -> a DoclingDocument, with Docling.

Docling's option classes are mapped here and nowhere else. Converters are built once per thread and options.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docingest.core import ocr
from docingest.core.formats import BY_EXTENSION, IMAGE_EXTENSIONS, Reader, extension
from docingest.exceptions import ConfigurationError, ParseError, UnsupportedDocumentError
from docingest.options import OcrMode, ParseOptions, PdfMode

if TYPE_CHECKING:
    from docling.document_converter import DocumentConverter
    from docling_core.types.doc import DoclingDocument

    from docingest.plugins import PluginInfo

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ParsedDocument:
    """A converted document and the parser that produced it (recorded in the payload)."""

    document: DoclingDocument
    parser: str
    pages: int
    ocr_pages: int = 0
    warning: str | None = None  # pages that could not be read, when others could


def tesseract_available() -> bool:
    return ocr.tesseract_available()


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
        raise ConfigurationError(f"pdf_mode accurate needs Docling's PDF models: {why}")
    return mode


@lru_cache(maxsize=4)
def _log_auto_once(resolved: PdfMode, why: str) -> None:
    log.info("pdf-mode auto: using %s PDF conversion (%s)", resolved.value, why)


def resolve_ocr(mode: OcrMode, lang: str = "eng") -> bool:
    """Whether OCR runs: on unless ``--ocr off`` and Tesseract is installed. An unknown language is a
    ConfigurationError (exit 2), not a skip of every scan."""
    if mode is OcrMode.OFF or not tesseract_available():
        return False
    ocr.check_languages(lang)
    return True




_local = threading.local()


def _converter(pdf_mode: PdfMode, ocr_key: tuple = ()) -> DocumentConverter:
    """One converter per thread, PDF mode (and OCR setting, for the accurate pipeline): Docling pipelines are heavy
    to build and not shared across threads."""
    cache = _local.__dict__.setdefault("converters", {})
    key = (pdf_mode, ocr_key if pdf_mode is PdfMode.ACCURATE else ())
    if key not in cache:
        cache[key] = _build_converter(pdf_mode, *key[1])
    return cache[key]


def _build_converter(pdf_mode: PdfMode, ocr_lang: str | None = None, force: bool = False) -> DocumentConverter:
    from docling.datamodel.base_models import InputFormat
    from docling.document_converter import DocumentConverter, NativePdfFormatOption, PdfFormatOption

    if pdf_mode is PdfMode.ACCURATE:
        from docling.datamodel.pipeline_options import OcrMode as DoclingOcrMode
        from docling.datamodel.pipeline_options import PdfPipelineOptions, TesseractCliOcrOptions

        # With layout models on disk, Docling's own Tesseract stage reads the regions that have no text layer.
        ocr_options = TesseractCliOcrOptions(lang=(ocr_lang or "eng").split("+"), psm=1,
                                             mode=DoclingOcrMode.FULL_PAGE if force else DoclingOcrMode.DEFAULT)
        opts = PdfPipelineOptions(do_ocr=ocr_lang is not None, do_table_structure=True, ocr_options=ocr_options)
        pdf_option = PdfFormatOption(pipeline_options=opts)
    else:
        from docling.datamodel.pipeline_options import NativePdfPipelineOptions

        pdf_option = NativePdfFormatOption(pipeline_options=NativePdfPipelineOptions(parser_threads=1))
    allowed: list[InputFormat] = [f for f in InputFormat
                                  if f not in (InputFormat.IMAGE, InputFormat.AUDIO, InputFormat.VIDEO)]
    return DocumentConverter(allowed_formats=allowed, format_options={InputFormat.PDF: pdf_option})


def check_supported(path: str | Path, options: ParseOptions) -> None:
    """Raise UnsupportedDocumentError (skip, with the reason) for a file this installation cannot read."""
    from docingest.plugins import parser_for

    ext = extension(path)
    known = BY_EXTENSION.get(ext)
    if (known is not None and known.reader is Reader.DOCLING) or parser_for(ext) is not None:
        return
    if known is not None and known.reader is Reader.OCR:
        if options.ocr is OcrMode.OFF:
            raise UnsupportedDocumentError("image skipped: OCR is off (option parse.ocr)")
        if not tesseract_available():
            raise UnsupportedDocumentError("image skipped: no OCR engine (install Debian's tesseract-ocr)")
        return
    if known is not None and known.reader is Reader.LIBREOFFICE:
        if libreoffice_available():
            return
        raise UnsupportedDocumentError(f"legacy .{ext} skipped: converting it needs LibreOffice (soffice)")
    raise UnsupportedDocumentError(f"unsupported file type: {('.' + ext) if ext else 'no extension'}")


def _readable(message: str, path: Path, ext: str) -> str:
    """A conversion error as a user can act on it: a PDF that cannot be opened says why (encrypted: a password is
    needed; damaged), and no message names the temporary copy the document was parsed from."""
    if ext == "pdf" and (why := pdf_unopenable(path)):
        return why
    return message.replace(str(path), path.name).replace(str(path.parent) + os.sep, "")


def pdf_unopenable(path: Path) -> str | None:
    """Why PDFium cannot open this PDF (None when it can): encrypted with a password, or damaged."""
    import pypdfium2 as pdfium

    try:
        pdfium.PdfDocument(str(path)).close()
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            return "encrypted PDF: a password is needed to open it"
        return f"damaged PDF: {str(exc).replace(str(path), path.name)}"
    return None


def parse_document(path: Path, options: ParseOptions, pdf_mode: PdfMode | None = None,
                   on_page: ocr.PageCallback | None = None) -> ParsedDocument:
    """Convert one file. Raises UnsupportedDocumentError (skip) or ParseError (failure), never returns partial.
    ``on_page(done, total)`` is called after each page OCR reads (a worker reports it, so its deadline moves)."""
    check_supported(path, options)
    size_mb = path.stat().st_size / 1e6
    if size_mb > options.max_file_size_mb:
        raise UnsupportedDocumentError(f"file too large: {size_mb:.1f} MB > {options.max_file_size_mb} MB")
    ext = extension(path)
    from docingest.plugins import parser_for

    if (plugin := parser_for(ext)) is not None:
        return _plugin_parse(plugin, path, options)
    if ext in IMAGE_EXTENSIONS:
        return _ocr_image(path, options, on_page)
    mode = pdf_mode or resolve_pdf_mode(options.pdf_mode)
    ocr_on = options.ocr is not OcrMode.OFF and tesseract_available()
    converter = _converter(mode, (options.ocr_lang, options.ocr is OcrMode.FORCE) if ocr_on else ())
    source: Any = path  # the file, or a stream for plain text
    if ext == "txt":  # plain text is read as Markdown (Docling has no plain-text reader)
        from io import BytesIO

        from docling.datamodel.base_models import DocumentStream

        source = DocumentStream(name=f"{path.stem}.md", stream=BytesIO(path.read_bytes()))
    try:
        result = converter.convert(source, raises_on_error=False)
    except Exception as exc:  # noqa: BLE001 - Docling raises many types for bad input
        raise ParseError(_readable(f"{type(exc).__name__}: {exc}".strip(), path, ext)) from exc
    status = result.status.value
    if status not in ("success", "partial_success") or result.document is None:
        reasons = "; ".join(e.error_message for e in result.errors) or f"conversion {status}"
        raise ParseError(_readable(f"Docling could not convert the file: {reasons}", path, ext))
    parser = f"docling-{mode.value}" if ext == "pdf" else "docling"
    if ext == "pdf" and mode is PdfMode.FAST and ocr_on:
        return _ocr_pdf(result.document, path, options, parser, on_page)
    return ParsedDocument(document=result.document, parser=parser, pages=len(result.document.pages))


def _plugin_parse(plugin: PluginInfo, path: Path, options: ParseOptions) -> ParsedDocument:
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


def _ocr_image(path: Path, options: ParseOptions, on_page: ocr.PageCallback | None = None) -> ParsedDocument:
    """Read every page of an image (all frames of a multi-page TIFF) with Tesseract into a DoclingDocument."""
    from docling_core.types.doc import DoclingDocument, Size

    doc = DoclingDocument(name=path.stem)
    try:
        frames = list(ocr.image_frames(path))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken images
        raise ParseError(f"cannot open the image: {type(exc).__name__}: {exc}") from exc
    errors: dict[int, str] = {}
    if on_page:
        on_page(0, len(frames))  # OCR starts: a worker gives the document a page's time limit more
    for number, frame in enumerate(frames, start=1):
        doc.add_page(page_no=number, size=Size(width=frame.width, height=frame.height))
        try:
            page = ocr.read_image(frame, options.ocr_lang, options.ocr_page_timeout_s)
        except ocr.OcrPageError as exc:
            errors[number] = str(exc)
        else:
            _add_ocr_blocks(doc, number, page, 1.0, frame.height)
        if on_page:
            on_page(number, len(frames))
    return _ocr_result(doc, "tesseract", len(frames), len(frames), errors)


def _ocr_pdf(native: DoclingDocument, path: Path, options: ParseOptions, parser: str,
             on_page: ocr.PageCallback | None) -> ParsedDocument:
    """The fast path's document with every page that has no usable text layer (every page, with --ocr force)
    replaced by what Tesseract reads on its rendering; pages with a good text layer keep it (no OCR time)."""
    import pypdfium2 as pdfium
    from docling_core.types.doc import DoclingDocument, PictureItem, Size, TextItem

    by_page: dict[int, list] = {}
    for item, _level in native.iterate_items():
        if prov := getattr(item, "prov", None):
            by_page.setdefault(prov[0].page_no, []).append(item)
    try:
        with contextlib.closing(pdfium.PdfDocument(str(path))) as pdf:
            count = len(pdf)
    except Exception as exc:  # noqa: BLE001
        raise ParseError(f"cannot render the PDF for OCR: {type(exc).__name__}: {exc}") from exc
    force = options.ocr is OcrMode.FORCE
    targets = [n for n in range(1, count + 1) if force or not ocr.text_layer_usable(
        " ".join(i.text for i in by_page.get(n, []) if isinstance(i, TextItem)))]
    if targets and not force:
        try:  # a blank page (a separator, the back of a cover) has nothing to read
            blank = ocr.blank_pages(path, targets)
        except Exception:  # noqa: BLE001 - unsure: read every candidate
            blank = set()
        targets = [n for n in targets if n not in blank]
    if not targets:
        return ParsedDocument(document=native, parser=parser, pages=len(native.pages))
    doc = DoclingDocument(name=native.name, origin=native.origin)
    read: dict[int, tuple[ocr.OcrPage, float]] = {}
    errors: dict[int, str] = {}
    pages = ocr.render_pdf_pages(path, targets, options.ocr_dpi)
    if on_page:
        on_page(0, len(targets))  # OCR starts: a worker gives the document a page's time limit more
    for done, number in enumerate(targets, start=1):
        try:
            _, image, scale = next(pages)
            read[number] = (ocr.read_image(image, options.ocr_lang, options.ocr_page_timeout_s), scale)
        except ocr.OcrPageError as exc:
            errors[number] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a page pdfium cannot render fails that page
            errors[number] = f"cannot render the page: {type(exc).__name__}: {exc}"
            pages = ocr.render_pdf_pages(path, targets[done:], options.ocr_dpi)
        if on_page:
            on_page(done, len(targets))
    for number in range(1, count + 1):
        if number in native.pages:
            size = native.pages[number].size
        elif number in read:
            page, scale = read[number]
            size = Size(width=page.width / scale, height=page.height / scale)
        else:
            continue
        doc.add_page(page_no=number, size=size)
        if number in read:
            page, scale = read[number]
            _add_ocr_blocks(doc, number, page, scale, size.height)
        elif number not in targets:
            for item in by_page.get(number, []):
                if isinstance(item, TextItem):
                    doc.add_text(label=item.label, text=item.text, orig=item.orig, prov=item.prov[0])
                elif isinstance(item, PictureItem):
                    doc.add_picture(prov=item.prov[0])
    return _ocr_result(doc, f"{parser}+tesseract", count, len(targets), errors)


def _add_ocr_blocks(doc: DoclingDocument, page_no: int, page: ocr.OcrPage, scale: float, height: float) -> None:
    """Tesseract's paragraphs as text items of the page, in reading order, with boxes in page points."""
    from docling_core.types.doc import BoundingBox, CoordOrigin, DocItemLabel, ProvenanceItem

    for block in page.blocks:
        left, top, right, bottom = (v / scale for v in block.box)
        bbox = BoundingBox(l=left, t=height - top, r=right, b=height - bottom, coord_origin=CoordOrigin.BOTTOMLEFT)
        doc.add_text(label=DocItemLabel.TEXT, text=block.text, orig=block.text,
                     prov=ProvenanceItem(page_no=page_no, bbox=bbox, charspan=(0, len(block.text))))


def _ocr_result(doc: DoclingDocument, parser: str, pages: int, ocr_pages: int,
                errors: dict[int, str]) -> ParsedDocument:
    """The document, with its unreadable pages named; a ParseError when OCR read no page and nothing else is there."""
    if errors and len(errors) == ocr_pages and not any(True for _ in doc.iterate_items()):
        first = next(iter(errors.values()))
        raise ParseError(f"OCR could not read any page ({len(errors)} of {pages}): {first}")
    warning = None
    if errors:
        listed = "; ".join(f"page {n}: {why}" for n, why in list(errors.items())[:5])
        warning = f"{len(errors)} of {pages} pages could not be read ({listed})"
    return ParsedDocument(document=doc, parser=parser, pages=pages, ocr_pages=ocr_pages - len(errors),
                          warning=warning)
