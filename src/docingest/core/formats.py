"""The formats docingest reads: one table, from which parsing (what reads a file, `core/parse.py`), the upload
service's allow-list (`service/app.py`) and its content checks (`service/sniff.py`) derive.

Every format ingest reads can be uploaded, except one named subset, ``NOT_UPLOADABLE``: the macro-enabled Office
formats (.docm, .dotm, .pptm, .potm, .ppsm, .xlsm), whose purpose is to carry VBA macros, and the legacy binary
Office and RTF files (.doc, .ppt, .xls, .rtf), whose OLE containers hold macros and embedded objects that the upload
checks cannot inspect. A folder, bucket or repository that holds them is the operator's own; an upload comes from any
user with a grant. Parser plugins (`docingest.plugins`) add extensions to ingest, never to uploads: their content
cannot be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Reader(StrEnum):
    """What turns a file into a document."""

    DOCLING = "docling"  # Docling's converters that need no ML model (PDF: pypdfium2 or docling-parse)
    OCR = "ocr"  # Tesseract, page by page (images; scanned PDF pages are read by Docling first, then OCR)
    LIBREOFFICE = "libreoffice"  # Docling, after LibreOffice converted the legacy file


class Check(StrEnum):
    """How an upload's content is checked against its extension (service/sniff.py)."""

    TEXT = "text"  # UTF-8 from the first byte to the last, without NUL
    PDF = "pdf"  # a PDF header, opens in PDFium, no executable attachment
    IMAGE = "image"  # the signature of one of the format's image types
    OOXML = "ooxml"  # a zip with the format's parts, no executable member, bounded sizes
    ODF = "odf"  # a zip whose `mimetype` member is the format's, no executable member, bounded sizes
    NONE = "none"  # not uploadable: nothing checks it


@dataclass(frozen=True)
class Format:
    name: str
    extensions: tuple[str, ...]
    reader: Reader
    check: Check
    parts: tuple[str, ...] = ()  # OOXML: members every such file has
    mimetype: str = ""  # ODF: the `mimetype` member's content
    image_types: tuple[str, ...] = ()  # images: the MIME types their signature may show

    @property
    def uploadable(self) -> bool:
        return self.check is not Check.NONE


def _ooxml(name: str, extensions: tuple[str, ...], part: str) -> Format:
    return Format(name, extensions, Reader.DOCLING, Check.OOXML, parts=("[Content_Types].xml", part))


def _odf(extension: str, kind: str) -> Format:
    return Format(f"OpenDocument {kind}", (extension,), Reader.DOCLING, Check.ODF,
                  mimetype=f"application/vnd.oasis.opendocument.{kind}")


FORMATS: tuple[Format, ...] = (
    Format("PDF", ("pdf",), Reader.DOCLING, Check.PDF),
    _ooxml("Word", ("docx", "dotx"), "word/document.xml"),
    _ooxml("PowerPoint", ("pptx", "potx", "ppsx"), "ppt/presentation.xml"),
    _ooxml("Excel", ("xlsx",), "xl/workbook.xml"),
    Format("macro-enabled Office", ("docm", "dotm", "pptm", "potm", "ppsm", "xlsm"), Reader.DOCLING, Check.NONE),
    _odf("odt", "text"),
    _odf("ods", "spreadsheet"),
    _odf("odp", "presentation"),
    Format("HTML", ("html", "htm", "xhtml"), Reader.DOCLING, Check.TEXT),
    Format("Markdown", ("md", "markdown"), Reader.DOCLING, Check.TEXT),
    Format("AsciiDoc", ("adoc", "asciidoc", "asc"), Reader.DOCLING, Check.TEXT),
    Format("CSV", ("csv",), Reader.DOCLING, Check.TEXT),
    Format("XML (JATS, USPTO, XBRL)", ("xml", "nxml"), Reader.DOCLING, Check.TEXT),
    Format("LaTeX", ("tex", "latex"), Reader.DOCLING, Check.TEXT),
    Format("WebVTT", ("vtt",), Reader.DOCLING, Check.TEXT),
    Format("plain text", ("txt",), Reader.DOCLING, Check.TEXT),
    Format("PNG", ("png",), Reader.OCR, Check.IMAGE, image_types=("image/png", "image/apng")),
    Format("JPEG", ("jpg", "jpeg"), Reader.OCR, Check.IMAGE, image_types=("image/jpeg",)),
    Format("TIFF", ("tif", "tiff"), Reader.OCR, Check.IMAGE, image_types=("image/tiff",)),
    Format("WebP", ("webp",), Reader.OCR, Check.IMAGE, image_types=("image/webp",)),
    Format("BMP", ("bmp",), Reader.OCR, Check.IMAGE, image_types=("image/bmp", "image/x-ms-bmp")),
    Format("legacy Office and RTF", ("doc", "ppt", "xls", "rtf"), Reader.LIBREOFFICE, Check.NONE),
)

BY_EXTENSION: dict[str, Format] = {ext: f for f in FORMATS for ext in f.extensions}


def extensions(reader: Reader) -> frozenset[str]:
    """The extensions of the formats ``reader`` reads."""
    return frozenset(ext for f in FORMATS if f.reader is reader for ext in f.extensions)


UPLOADABLE: frozenset[str] = frozenset(ext for f in FORMATS if f.uploadable for ext in f.extensions)
NOT_UPLOADABLE: frozenset[str] = frozenset(BY_EXTENSION) - UPLOADABLE
IMAGE_EXTENSIONS: frozenset[str] = extensions(Reader.OCR)
OCR_EXTENSIONS: frozenset[str] = IMAGE_EXTENSIONS | {"pdf"}  # the kinds of document OCR can touch


def extension(path: str | Path) -> str:
    """A file's extension as the table keys it: lower case, without the dot ("" without one)."""
    return Path(path).suffix.lower().lstrip(".")
