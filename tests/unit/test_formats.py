"""One formats table (core/formats.py): parsing, the upload allow-list and the upload content checks derive from it
and agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from docingest.core import formats
from docingest.core.formats import BY_EXTENSION, FORMATS, NOT_UPLOADABLE, UPLOADABLE, Check, Reader
from docingest.core.parse import check_supported, libreoffice_available
from docingest.exceptions import ConfigurationError, UnsupportedDocumentError
from docingest.options import OcrMode, ParseOptions
from docingest.service.app import allowed_upload_types
from docingest.service.sniff import sniff_file
from docingest.settings import DocingestSettings

pytestmark = pytest.mark.unit


def test_each_extension_belongs_to_one_format_in_lower_case():
    listed = [ext for f in FORMATS for ext in f.extensions]
    assert len(listed) == len(set(listed)) == len(BY_EXTENSION)
    assert all(ext == ext.lower() and not ext.startswith(".") for ext in listed)
    assert BY_EXTENSION[formats.extension("Report.PDF")].name == "PDF" and formats.extension("notes") == ""


@pytest.mark.parametrize("ext", sorted(formats.extensions(Reader.DOCLING)))
def test_parsing_accepts_every_format_docling_reads(ext):
    check_supported(Path(f"file.{ext}"), ParseOptions())


@pytest.mark.parametrize("ext", sorted(formats.extensions(Reader.OCR)))
def test_images_are_read_only_with_ocr(ext):
    with pytest.raises(UnsupportedDocumentError, match="OCR is off"):
        check_supported(Path(f"scan.{ext}"), ParseOptions(ocr=OcrMode.OFF))


@pytest.mark.skipif(libreoffice_available(), reason="LibreOffice is installed: legacy files are read")
@pytest.mark.parametrize("ext", sorted(formats.extensions(Reader.LIBREOFFICE)))
def test_legacy_office_needs_libreoffice(ext):
    with pytest.raises(UnsupportedDocumentError, match="needs LibreOffice"):
        check_supported(Path(f"old.{ext}"), ParseOptions())


def test_an_unknown_extension_is_skipped_with_its_name():
    with pytest.raises(UnsupportedDocumentError, match=r"unsupported file type: \.exe"):
        check_supported(Path("setup.exe"), ParseOptions())


@pytest.mark.parametrize("ext", sorted(UPLOADABLE))
def test_every_uploadable_format_has_a_content_check(tmp_path, ext):
    """Bytes that are none of these formats: each is refused by its own check, never as 'not accepted'."""
    path = tmp_path / f"x.{ext}"
    path.write_bytes(b"\x00\xff" * 64)
    refused = sniff_file(path, ext)
    assert refused and "is not accepted" not in refused, refused


def test_uploads_accept_what_ingest_reads_except_the_named_subset():
    assert set(BY_EXTENSION) == UPLOADABLE | NOT_UPLOADABLE
    assert {"docm", "dotm", "pptm", "potm", "ppsm", "xlsm", "doc", "ppt", "xls", "rtf"} == NOT_UPLOADABLE
    assert all(BY_EXTENSION[ext].check is Check.NONE for ext in NOT_UPLOADABLE)
    assert allowed_upload_types(DocingestSettings()) == set(UPLOADABLE)
    assert {"webp", "bmp", "ods", "odp", "tex", "vtt", "nxml", "xhtml"} <= UPLOADABLE  # refused before the table
    assert allowed_upload_types(DocingestSettings(upload={"allowed_types": [".PDF", "md"]})) == {"pdf", "md"}
    with pytest.raises(ConfigurationError, match=r"lists \.xlsm: macro-enabled or legacy Office"):
        allowed_upload_types(DocingestSettings(upload={"allowed_types": ["pdf", "xlsm"]}))
    with pytest.raises(ConfigurationError, match=r"lists \.exe: uploads accept only"):
        allowed_upload_types(DocingestSettings(upload={"allowed_types": ["exe"]}))
