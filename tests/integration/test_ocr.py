"""OCR on the default path: scanned PDFs page by page (a born-digital page keeps its text layer), multi-page TIFFs,
rotated scans, the corpus's scans; options, limits, and a fingerprint that only counts OCR for images and PDFs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from docingest.core import ocr
from docingest.core.parse import parse_document
from docingest.flows.ingest import ingest_documents
from docingest.options import IngestOptions, OcrMode, ParseOptions, PdfMode
from docingest.retrieval import search

pytestmark = [pytest.mark.integration, pytest.mark.slow]

needs_tesseract = pytest.mark.skipif(not ocr.tesseract_available(),
                                     reason="Tesseract is not installed (bash scripts/system-deps.sh installs it)")

HARBOUR = [["Quarterly report of the harbour authority", "The northern pier was repaired in March."],
           ["Second page of the report", "The lighthouse keeper saw a violet heron", "during eleven hours of fog."]]


def text_of(parsed) -> str:
    return " ".join(t.text for t in parsed.document.texts)


def pages_of(parsed, phrase: str) -> set[int]:
    return {t.prov[0].page_no for t in parsed.document.texts if phrase in t.text}


@needs_tesseract
def test_a_scanned_pdf_becomes_searchable_by_a_phrase_on_its_second_page(prefect_server, home, tmp_path, scanned_pdf):
    docs = tmp_path / "docs"
    docs.mkdir()
    scanned_pdf(docs / "harbour.pdf", HARBOUR)
    result = ingest_documents(source=str(docs), collection="scans")
    assert (result.documents.new, result.documents.failed, result.documents.skipped) == (1, 0, 0)
    assert result.pages == 2
    hit = search("who saw a heron in the fog", "scans", limit=1)[0]
    assert hit.path == "harbour.pdf" and "violet heron" in hit.text


@needs_tesseract
def test_a_mixed_pdf_reads_its_scanned_page_and_keeps_the_text_page(corpus, tmp_path, mixed_pdf):
    path = mixed_pdf(tmp_path / "mixed.pdf", corpus / "pdf/sources/2305.03393v1-pg9.pdf",
                     ["Appendix scanned from paper", "The secret phrase is amber falcon."], tmp_path)
    parsed = parse_document(path, ParseOptions(), PdfMode.FAST)
    assert parsed.parser == "docling-fast+tesseract" and (parsed.pages, parsed.ocr_pages) == (2, 1)
    assert pages_of(parsed, "amber falcon") == {2}
    native = parse_document(corpus / "pdf/sources/2305.03393v1-pg9.pdf", ParseOptions(), PdfMode.FAST)
    page_one = [t.text for t in parsed.document.texts if t.prov[0].page_no == 1]
    assert page_one == [t.text for t in native.document.texts]  # the text layer, as it was: not OCR'd
    assert native.parser == "docling-fast" and native.ocr_pages == 0  # a born-digital PDF gets no OCR at all
    forced = parse_document(path, ParseOptions(ocr=OcrMode.FORCE), PdfMode.FAST)
    assert forced.ocr_pages == 2 and pages_of(forced, "amber falcon") == {2}
    off = parse_document(path, ParseOptions(ocr=OcrMode.OFF), PdfMode.FAST)
    assert off.parser == "docling-fast" and "amber" not in text_of(off)


@needs_tesseract
def test_every_page_of_a_multipage_tiff_and_a_rotated_scan(tmp_path, multipage_tiff, page_image, scanned_pdf):
    tiff = multipage_tiff(tmp_path / "fax.tiff", HARBOUR)
    parsed = parse_document(tiff, ParseOptions(), PdfMode.FAST)
    assert parsed.pages == 2 and pages_of(parsed, "violet heron") == {2}
    assert pages_of(parsed, "northern pier") == {1}
    sideways = tmp_path / "sideways.png"
    page_image(HARBOUR[1], rotate=90).save(sideways)
    assert "violet heron" in text_of(parse_document(sideways, ParseOptions(), PdfMode.FAST))
    upside_down = scanned_pdf(tmp_path / "upside-down.pdf", [HARBOUR[1]], rotate=180)
    assert "violet heron" in text_of(parse_document(upside_down, ParseOptions(), PdfMode.FAST))


@needs_tesseract
def test_the_corpus_scans_are_read(corpus):
    rotated = parse_document(corpus / "ocr/sources/ocr_test_rotated_90.pdf", ParseOptions(), PdfMode.FAST)
    assert "Docling bundles PDF document conversion" in text_of(rotated)
    mismatch = parse_document(corpus / "ocr/sources/sample_with_rotation_mismatch.pdf", ParseOptions(), PdfMode.FAST)
    assert len(text_of(mismatch)) > 100


@needs_tesseract
def test_a_page_past_its_time_limit_fails_alone(corpus, tmp_path, mixed_pdf, scanned_pdf):
    path = mixed_pdf(tmp_path / "mixed.pdf", corpus / "pdf/sources/2305.03393v1-pg9.pdf", ["Slow page"], tmp_path)
    parsed = parse_document(path, ParseOptions(ocr_page_timeout_s=0.001), PdfMode.FAST)  # no Tesseract call is 1 ms
    assert parsed.warning == "1 of 2 pages could not be read (page 2: OCR took longer than 0.001 s)"
    assert text_of(parsed)  # the text page is there
    only_scan = scanned_pdf(tmp_path / "scan.pdf", HARBOUR)
    from docingest.exceptions import ParseError

    with pytest.raises(ParseError, match="OCR could not read any page \\(2 of 2\\)"):
        parse_document(only_scan, ParseOptions(ocr_page_timeout_s=0.001), PdfMode.FAST)


@needs_tesseract
def test_a_long_scan_in_a_worker_outlives_the_document_limit_while_pages_advance(prefect_server, home, tmp_path,
                                                                                  monkeypatch, scanned_pdf):
    docs = tmp_path / "docs"
    docs.mkdir()
    scanned_pdf(docs / "long.pdf", [[f"Page {n} of the long scan", f"keyword{n}"] for n in range(1, 5)])
    # 4 pages of over 3 s each (the fault sleeps in every page's OCR call): 12 s, past the document's 8 s limit. The
    # 8 s must cover what comes before OCR starts (from then on the limit moves with each page): measured 0.45 s in a
    # process with the parse workers' preloads (core/worker_preload.py: Docling already imported, as in every parse
    # worker), so 8 s is over 15x. (A cold process took 5.3 s, Docling's import included; no parse worker is cold.)
    monkeypatch.setenv("DOCINGEST_FAULT", "slow-ocr:3")
    options = IngestOptions.model_validate({"parse": {"timeout_s": 8, "ocr_dpi": 150}})
    result = ingest_documents(source=str(docs), collection="long", options=options)
    assert (result.documents.new, result.documents.failed) == (1, 0), result.failures
    assert result.pages == 4
    assert "keyword3" in search("keyword3", "long", limit=1)[0].text
    # A page that makes no progress still ends the document, a page limit and a document limit after the last page.
    # (Deterministic: a 3 s page against a 0.5 s page limit plus a 1 s document limit; were the conversion before OCR
    # slower than 1 s, the document would fail on its plain limit, still a timeout.)
    monkeypatch.setenv("DOCINGEST_FAULT", "slow-ocr:3")
    other = tmp_path / "other"
    other.mkdir()
    scanned_pdf(other / "stuck.pdf", [["A page that never finishes"]])
    hung = ingest_documents(source=str(other), collection="hung", options=IngestOptions.model_validate(
        {"parse": {"timeout_s": 1, "ocr_dpi": 150, "ocr_page_timeout_s": 0.5}}))
    [failure] = hung.failures
    assert failure.stage == "parse" and "timeout" in failure.error


@needs_tesseract
def test_installing_tesseract_reprocesses_only_images_and_pdfs(prefect_server, home, tmp_path, monkeypatch, page_image, scanned_pdf):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("# Notes\n\nThe meeting moved to Thursday.\n")
    scanned_pdf(docs / "harbour.pdf", HARBOUR)
    page_image(["A photographed whiteboard", "says the launch is in May."]).save(docs / "board.png")
    options = IngestOptions.model_validate({"parse": {"isolation": "none"}})
    monkeypatch.setattr(ocr, "tesseract_available", lambda: False)
    before = ingest_documents(source=str(docs), collection="install", options=options)
    d = before.documents
    assert (d.new, d.skipped) == (1, 2)  # notes.md ingested; the PDF is empty, the image has no OCR engine
    skipped = {s.source.rsplit("/", 1)[-1]: s.reason for s in before.skipped}
    assert "install Tesseract" in skipped["harbour.pdf"] and "no OCR engine" in skipped["board.png"]
    monkeypatch.undo()
    after = ingest_documents(source=str(docs), collection="install", options=options)
    d = after.documents
    assert (d.unchanged, d.changed + d.new, d.failed) == (1, 2, 0)
    by_path = {o.path: o for o in after.outcomes}
    assert by_path["notes.md"].status.value == "unchanged"
    assert after.chunks.embedded == by_path["harbour.pdf"].chunks + by_path["board.png"].chunks > 0
    assert {h.path for h in search("launch month on the whiteboard", "install", limit=1)} == {"board.png"}


def test_unknown_ocr_language_is_one_line_and_exit_2(tmp_path, home, monkeypatch):
    from docingest.cli import app

    if not ocr.tesseract_available():
        pytest.skip("needs Tesseract to know its languages")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n")
    result = CliRunner().invoke(app, ["ingest", str(docs), "-c", "langs", "--ocr-lang", "eng+xyz"])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown OCR language 'xyz'" in lines[0] and "installed: eng" in lines[0]


@needs_tesseract
def test_a_blank_page_without_text_costs_no_ocr(tmp_path, scanned_pdf):
    path = scanned_pdf(tmp_path / "with-blank.pdf", [HARBOUR[0], []])  # a scanned page, then a white one
    parsed = parse_document(path, ParseOptions(), PdfMode.FAST)
    assert (parsed.pages, parsed.ocr_pages) == (2, 1) and pages_of(parsed, "northern pier") == {1}
