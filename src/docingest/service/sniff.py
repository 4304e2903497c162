"""Whole-file type checks for uploads: does a file's content match its extension, and is nothing executable hidden
in it?

Text must be UTF-8 from the first byte to the last, without NUL; images must carry their format's signature; a PDF
must open in PDFium and embed no executable; an office document must be a zip with its format's structure, no
executable member and no zip-bomb sizes. Messages are short and safe to show to a client (no server paths).

This module imports nothing from :mod:`docingest.service.uploads`, so that the upload store can import it.
"""

from __future__ import annotations

import codecs
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from docingest.core.formats import BY_EXTENSION, Check

if TYPE_CHECKING:
    import pypdfium2

# Executables: member names (in containers) and magic numbers.
EXECUTABLE_EXTENSIONS = (".exe", ".dll", ".com", ".scr", ".msi", ".bat", ".cmd", ".ps1", ".vbs", ".js", ".jar", ".sh",
                         ".elf", ".so", ".dylib", ".app")
MACHO_MAGICS = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe",  # thin 32/64-bit
                b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf")  # fat (also Java class files), fat 64-bit

TEXT_CHUNK = 1 << 20  # bytes read at a time from a text file
PDF_HEADER_WITHIN = 1024  # PDF readers accept "%PDF-" anywhere in the first KiB
MEMBER_HEAD = 64  # bytes read from each zip member to spot an executable
ATTACHMENT_HEAD = 4096  # bytes of a PDF attachment given to is_executable (the attachment is in memory anyway)
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_RATIO = 50  # a zip is a bomb when its declared sizes exceed both this many times the file size ...
MAX_ZIP_EXPANDED = 1 << 30  # ... and this many bytes
_EOCD = b"PK\x05\x06"  # a zip's end of central directory record (22 bytes and a comment)

try:  # PDFium is not thread-safe: share Docling's lock when Docling runs in this process
    from docling.utils.locks import pypdfium2_lock as _pdfium_lock
except ImportError:  # pragma: no cover - Docling is a dependency
    _pdfium_lock = threading.Lock()


def sniff_file(path: Path, extension: str) -> str | None:
    """Why the file's content does not match the extension (None when it does); the check is the format's in
    core/formats.py."""
    known = BY_EXTENSION.get(extension)
    if known is None or known.check is Check.NONE:
        return f"file type .{extension} is not accepted"
    check = known.check
    if check is Check.TEXT:
        return _sniff_text(path, extension)  # an executable is binary: refused as such
    with open(path, "rb") as fh:
        if is_executable(fh.read(4096)):
            return "the file is an executable, whatever its name"
    if check is Check.IMAGE:
        return _sniff_image(path, extension, known.image_types)
    if check is Check.PDF:
        return _sniff_pdf(path)
    return _sniff_zip(path, extension)


def is_executable(head: bytes) -> bool:
    """Whether the first bytes of some data are a native executable: PE, ELF or Mach-O (scripts are not: a ``#!``
    line only counts inside containers)."""
    if head.startswith(b"MZ"):
        if len(head) >= 0x40:
            offset = int.from_bytes(head[0x3C:0x40], "little")
            if offset + 4 <= len(head):
                return head[offset:offset + 4] == b"PE\x00\x00"
        return b"\x00" in head  # too short to find the PE header: a DOS header is binary, text is not
    if head.startswith(b"\x7fELF"):
        return len(head) > 4 and head[4] in (1, 2)  # ELFCLASS32, ELFCLASS64
    return head.startswith(MACHO_MAGICS)


def is_executable_member(name: str, head: bytes) -> bool:
    """Whether a member of a container (a zip member, a PDF attachment) is a program: by its name, a native
    executable's magic or a ``#!`` script line."""
    base = name.replace("\\", "/").rstrip("/").rstrip(". ").lower()  # Windows ignores trailing dots and spaces
    return base.endswith(EXECUTABLE_EXTENSIONS) or head.startswith(b"#!") or is_executable(head)


def _sniff_text(path: Path, extension: str) -> str | None:
    """UTF-8 (a BOM is fine) from the first byte to the last, without NUL; read in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(TEXT_CHUNK):
                if b"\x00" in chunk:
                    return f"the content is binary, not .{extension} text"
                decoder.decode(chunk)  # keeps a character split at the chunk's end for the next chunk
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return f"the content is not UTF-8 .{extension} text"
    return None


def _sniff_image(path: Path, extension: str, image_types: tuple[str, ...]) -> str | None:
    """The format ``filetype`` recognizes from the signature must be the extension's."""
    import filetype

    kind = filetype.guess(path)
    if kind is None or kind.mime not in image_types:
        return f"the content is not a .{extension} file"
    return None


def _sniff_pdf(path: Path) -> str | None:
    """A PDF header in the first KiB, a document PDFium opens with at least one page, no executable attachment."""
    import pypdfium2
    import pypdfium2.raw

    with open(path, "rb") as fh:
        head = fh.read(PDF_HEADER_WITHIN)
    if b"%PDF-" not in head:
        return "the content is not a .pdf file"
    if is_executable(head):  # a PE/PDF polyglot: the header hidden after an executable's start
        return "the file is an executable, whatever its name"
    with _pdfium_lock:
        try:
            pdf = pypdfium2.PdfDocument(str(path))
        except pypdfium2.PdfiumError as exc:
            encrypted = exc.err_code == pypdfium2.raw.FPDF_ERR_PASSWORD
            return "the PDF is encrypted" if encrypted else "the content is not a valid PDF"
        try:
            if len(pdf) < 1:
                return "the content is not a valid PDF"
            for index in range(pdf.count_attachments()):
                name, head = _attachment(pdf, index)
                if is_executable_member(name, head):
                    return "the PDF embeds an executable"
        except pypdfium2.PdfiumError:
            return "the PDF's attachments cannot be read"
        finally:
            pdf.close()
    return None


def _attachment(pdf: pypdfium2.PdfDocument, index: int) -> tuple[str, bytes]:
    """The name and first bytes of a PDF's attachment ("" and b"" where it has none)."""
    import pypdfium2

    attachment = pdf.get_attachment(index)
    try:
        name = attachment.get_name()
    except pypdfium2.PdfiumError:  # no name
        name = ""
    try:
        data = attachment.get_data()
    except pypdfium2.PdfiumError:  # no data: pypdfium2 raises rather than return an empty array
        return name, b""
    return name, bytes(data[:ATTACHMENT_HEAD])


def _zip_end(path: Path, size: int) -> tuple[int, bytes, bytes] | None:
    """The end record of a zip as :mod:`zipfile` finds it: (declared member count, 0xFFFF for zip64; the comment;
    bytes after the comment). None without one."""
    with open(path, "rb") as fh:
        fh.seek(max(size - 22 - 0xFFFF, 0))
        tail = fh.read()
    if len(tail) >= 22 and tail[-22:-18] == _EOCD and tail[-2:] == b"\x00\x00":
        start = len(tail) - 22  # zipfile's fast path: an end record without comment ends the file
    elif (start := tail.rfind(_EOCD)) < 0 or start + 22 > len(tail):
        return None
    count = int.from_bytes(tail[start + 10:start + 12], "little")
    comment_end = start + 22 + int.from_bytes(tail[start + 20:start + 22], "little")
    return count, tail[start + 22:comment_end], tail[comment_end:]


def _sniff_zip(path: Path, extension: str) -> str | None:
    """A zip from its first byte, no executable appended, bounded sizes, the format's structure, no executable
    member (by name or first bytes)."""
    invalid = f"the content is not a .{extension} (zip) document"
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # also refuses data (an executable) in front of the archive
            return invalid
    end = _zip_end(path, size)
    if end is None or not zipfile.is_zipfile(path):
        return invalid
    count, comment, after = end
    if is_executable(comment) or is_executable(after):
        return "an executable is appended to the document"
    if count != 0xFFFF and count > MAX_ZIP_MEMBERS:  # refused before zipfile reads the whole central directory
        return "the archive has too many members"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                return "the archive has too many members"
            expanded = sum(info.file_size for info in members)
            if expanded > MAX_ZIP_RATIO * size and expanded > MAX_ZIP_EXPANDED:
                return "the archive expands too much (zip bomb)"
            if refused := _zip_structure(archive, extension):
                return refused
            for info in members:
                head = b""
                if not info.is_dir() and info.file_size > 0:
                    with archive.open(info) as member:
                        head = member.read(MEMBER_HEAD)
                if is_executable_member(info.filename, head):
                    return "the document contains an executable"
    except Exception:  # noqa: BLE001 - any failure to read it (corrupt, encrypted, unknown compression) refuses it
        return invalid
    return None


def _zip_structure(archive: zipfile.ZipFile, extension: str) -> str | None:
    """Why the archive lacks the structure of the extension's format (None when it has it)."""
    names, known = set(archive.namelist()), BY_EXTENSION[extension]
    if known.check is Check.OOXML:
        if not all(part in names for part in known.parts):
            return f"the content is not a .{extension} document"
        return None
    if "mimetype" not in names:
        return f"the content is not a .{extension} document"
    with archive.open("mimetype") as member:
        mimetype = member.read(200).strip()
    if mimetype != known.mimetype.encode():
        return f"the content is not a .{extension} document"
    return None
