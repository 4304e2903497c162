"""Whole-file type checks: text is UTF-8 throughout, images by signature, PDFs open and embed no executable, office
zips have their structure, no executable member and no zip-bomb sizes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pypdfium2
import pytest
from PIL import Image

from docingest.service import sniff as sniff_module
from docingest.service.sniff import is_executable, is_executable_member, sniff_file

pytestmark = pytest.mark.unit


def minimal_pe(size: int = 0x200) -> bytes:
    """A DOS header whose e_lfanew (0x3C) points to a PE signature."""
    data = bytearray(size)
    data[0:2] = b"MZ"
    data[0x3C:0x40] = (0x80).to_bytes(4, "little")
    data[0x80:0x86] = b"PE\x00\x00\x4c\x01"
    return bytes(data)


ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 57
DOCX = {"[Content_Types].xml": "<Types/>", "_rels/.rels": "<Relationships/>", "word/document.xml": "<w:document/>"}


def check(tmp_path: Path, name: str, data: bytes) -> str | None:
    """Write the bytes to a file of that name and sniff it; a refusal never shows the server path."""
    path = tmp_path / name
    path.write_bytes(data)
    refused = sniff_file(path, name.rpartition(".")[2])
    assert refused is None or str(tmp_path) not in refused
    return refused


def make_zip(members: dict[str, str | bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def make_pdf(path: Path, attachments: dict[str, bytes] | None = None) -> bytes:
    pdf = pypdfium2.PdfDocument.new()
    try:
        pdf.new_page(200, 200)
        for name, data in (attachments or {}).items():
            pdf.new_attachment(name).set_data(data)
        pdf.save(path)
    finally:
        pdf.close()
    return path.read_bytes()


def image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


# --- executables


def test_is_executable_knows_pe_elf_and_mach_o():
    assert is_executable(minimal_pe())
    assert is_executable(minimal_pe()[:64])  # too short to reach the PE header: MZ and binary
    assert is_executable(ELF)
    for magic in (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe",
                  b"\xca\xfe\xba\xbe"):
        assert is_executable(magic + b"\x00" * 28)


def test_is_executable_leaves_text_alone():
    assert not is_executable(b"MZ is the start of this note")
    assert not is_executable(b"MZ" + b"x" * 0x3A + (8).to_bytes(4, "little") + b"not a PE header, binary \x00")
    assert not is_executable(b"\x7fELF is printable")
    assert not is_executable(b"#!/bin/sh\necho hi\n")  # a script only counts inside containers
    assert not is_executable(b"")


def test_container_members_count_names_and_script_lines():
    assert is_executable_member("word/media/evil.EXE", b"")
    assert is_executable_member("tools/run.sh. ", b"")  # Windows drops trailing dots and spaces
    assert is_executable_member("word/x.xml", b"#!/bin/sh\n")
    assert is_executable_member("word/media/image1.png", minimal_pe()[:64])
    assert not is_executable_member("word/document.xml", b"<?xml version='1.0'?>")


# --- text


@pytest.mark.parametrize("data", [
    b"MZ this markdown starts like a DOS header\n",
    b"#!/bin/sh but it is only text\n",
    b"\x7fELF-looking printable text\n",
    "\ufeff# With a BOM: caf\u00e9 \u20ac\n".encode(),
    b"",
])
def test_text_that_is_utf8_without_nul_passes(tmp_path, data):
    assert check(tmp_path, "note.md", data) is None


def test_character_split_at_a_chunk_boundary_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(sniff_module, "TEXT_CHUNK", 4)
    for lead in range(6):  # the 3-byte euro sign lands at every offset in the 4-byte chunks
        assert check(tmp_path, "split.txt", ("a" * lead + "\u20ac and more \u20ac").encode()) is None
    assert check(tmp_path, "cut.txt", ("abcd" + "\u20ac").encode()[:-1]) == "the content is not UTF-8 .txt text"


def test_nul_deep_in_the_file_fails(tmp_path):
    data = bytearray(b"plain text line\n" * 2000)
    data[20_000] = 0
    assert check(tmp_path, "late.txt", bytes(data)) == "the content is binary, not .txt text"


def test_latin1_and_binaries_fail_as_text(tmp_path):
    latin1 = "caf\u00e9 cr\u00e8me".encode("latin-1")
    assert check(tmp_path, "latin.txt", latin1) == "the content is not UTF-8 .txt text"
    assert check(tmp_path, "exe.md", minimal_pe()) == "the content is binary, not .md text"
    assert check(tmp_path, "elf.vtt", ELF) == "the content is binary, not .vtt text"
    assert check(tmp_path, "macro.docm", b"PK\x03\x04") == "file type .docm is not accepted"  # never uploadable


# --- images


@pytest.mark.parametrize(("name", "fmt"), [("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.jpeg", "JPEG"),
                                           ("a.tif", "TIFF"), ("a.tiff", "TIFF")])
def test_images_pass_with_their_own_format(tmp_path, name, fmt):
    assert check(tmp_path, name, image_bytes(fmt)) is None


def test_image_with_another_format_fails(tmp_path):
    assert check(tmp_path, "a.png", image_bytes("JPEG")) == "the content is not a .png file"
    assert check(tmp_path, "a.jpg", image_bytes("PNG")) == "the content is not a .jpg file"
    assert check(tmp_path, "a.png", minimal_pe()) == "the file is an executable, whatever its name"


# --- PDF


def test_real_pdf_passes(tmp_path):
    assert make_pdf(tmp_path / "x.pdf").startswith(b"%PDF-")
    assert sniff_file(tmp_path / "x.pdf", "pdf") is None


def test_pdf_with_a_harmless_attachment_passes(tmp_path):
    make_pdf(tmp_path / "x.pdf", {"notes.txt": b"just notes"})
    assert sniff_file(tmp_path / "x.pdf", "pdf") is None


def test_pdf_header_followed_by_an_executable_fails(tmp_path):
    assert check(tmp_path, "x.pdf", b"%PDF-1.4\n" + minimal_pe()) == "the content is not a valid PDF"
    assert check(tmp_path, "y.pdf", b"%PDF-1.4\n") == "the content is not a valid PDF"


def test_executable_in_front_of_a_pdf_header_fails(tmp_path):
    pdf = make_pdf(tmp_path / "x.pdf")
    assert check(tmp_path, "poly.pdf", minimal_pe()[:0x100] + pdf) == "the file is an executable, whatever its name"


def test_pdf_without_header_fails(tmp_path):
    assert check(tmp_path, "x.pdf", b"hello" * 300) == "the content is not a .pdf file"


@pytest.mark.parametrize(("name", "data"), [("evil.exe", minimal_pe()), ("invoice.txt", minimal_pe()),
                                            ("lib.so", b"anything"), ("run.txt", b"#!/bin/sh\nrm -rf /\n"),
                                            ("tool.bin", ELF)])
def test_pdf_with_an_executable_attachment_fails(tmp_path, name, data):
    make_pdf(tmp_path / "x.pdf", {"fine.txt": b"fine", name: data})
    assert sniff_file(tmp_path / "x.pdf", "pdf") == "the PDF embeds an executable"


# --- office zips


def test_minimal_docx_passes(tmp_path):
    assert check(tmp_path, "a.docx", make_zip(DOCX)) is None


def test_docx_renamed_pptx_fails(tmp_path):
    assert check(tmp_path, "a.pptx", make_zip(DOCX)) == "the content is not a .pptx document"


@pytest.mark.parametrize(("ext", "members"), [
    ("pptx", {"[Content_Types].xml": "<Types/>", "ppt/presentation.xml": "<p/>"}),
    ("xlsx", {"[Content_Types].xml": "<Types/>", "xl/workbook.xml": "<w/>"}),
    ("odt", {"mimetype": "application/vnd.oasis.opendocument.text", "content.xml": "<c/>"}),
    ("ods", {"mimetype": "application/vnd.oasis.opendocument.spreadsheet", "content.xml": "<c/>"}),
    ("odp", {"mimetype": "application/vnd.oasis.opendocument.presentation", "content.xml": "<c/>"}),
])
def test_each_office_format_needs_its_structure(tmp_path, ext, members):
    assert check(tmp_path, f"a.{ext}", make_zip(members, zipfile.ZIP_STORED)) is None
    other = {"odt": "ods", "ods": "odp", "odp": "odt", "pptx": "xlsx", "xlsx": "pptx"}[ext]
    assert check(tmp_path, f"a.{other}", make_zip(members)) == f"the content is not a .{other} document"


def test_docx_with_an_executable_member_name_fails(tmp_path):
    data = make_zip({**DOCX, "word/media/evil.exe": b"harmless bytes"})
    assert check(tmp_path, "a.docx", data) == "the document contains an executable"


@pytest.mark.parametrize("payload", [minimal_pe(), ELF, b"#!/bin/sh\necho pwned\n"])
def test_docx_with_executable_member_bytes_fails(tmp_path, payload):
    data = make_zip({**DOCX, "word/media/image1.png": payload})
    assert check(tmp_path, "a.docx", data) == "the document contains an executable"


def test_executable_before_or_after_the_zip_fails(tmp_path):
    docx = make_zip(DOCX)
    assert check(tmp_path, "sfx.docx", minimal_pe() + docx) == "the file is an executable, whatever its name"
    assert check(tmp_path, "tail.docx", docx + minimal_pe()) == "an executable is appended to the document"


def test_not_a_zip_fails(tmp_path):
    assert check(tmp_path, "a.docx", b"just text") == "the content is not a .docx (zip) document"
    assert check(tmp_path, "b.docx", b"PK\x03\x04" + b"\x00" * 100) == "the content is not a .docx (zip) document"


def test_zip_bomb_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(sniff_module, "MAX_ZIP_EXPANDED", 1 << 20)
    data = make_zip({**DOCX, "word/media/zeros.bin": bytes(4 << 20)})
    assert check(tmp_path, "bomb.docx", data) == "the archive expands too much (zip bomb)"
    # highly compressible but small in absolute terms: fine
    assert check(tmp_path, "ok.docx", make_zip({**DOCX, "word/media/zeros.bin": bytes(1 << 19)})) is None


def test_too_many_members_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(sniff_module, "MAX_ZIP_MEMBERS", 5)
    data = make_zip({**DOCX, **{f"word/media/{n}.xml": "<x/>" for n in range(5)}})
    assert check(tmp_path, "many.docx", data) == "the archive has too many members"


# --- anything else


@pytest.mark.parametrize("ext", ["exe", "doc", "zip", ""])
def test_unknown_extension_fails(tmp_path, ext):
    path = tmp_path / "file"
    path.write_bytes(b"whatever")
    assert sniff_file(path, ext) == f"file type .{ext} is not accepted"
