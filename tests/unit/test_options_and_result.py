import pytest
from pydantic import ValidationError

from docingest.core.chunk import effective_max_tokens
from docingest.core.parse import check_supported
from docingest.datamodel import FailureItem, IngestResult, SkippedItem
from docingest.exceptions import ConfigurationError, StoreError, UnsupportedDocumentError
from docingest.options import ChunkOptions, IngestOptions, OcrMode, ParseOptions

pytestmark = pytest.mark.unit


def test_options_forbid_unknown_fields_and_validate_ranges():
    with pytest.raises(ValidationError):
        IngestOptions(parse={"pdf_mod": "fast"})
    with pytest.raises(ValidationError):
        IngestOptions(embed={"batch_size": 0})
    assert IngestOptions.model_validate({"parse": {"pdf_mode": "fast"}}).parse.pdf_mode.value == "fast"


def test_chunk_size_never_exceeds_model_max_sequence_length():
    assert effective_max_tokens(ChunkOptions(), 256) == 256
    assert effective_max_tokens(ChunkOptions(max_tokens=128), 256) == 128
    assert effective_max_tokens(ChunkOptions(max_tokens=4096), 256) == 256


@pytest.mark.parametrize("name", ["a.pdf", "b.DOCX", "c.pptx", "d.xlsx", "e.html", "f.md", "g.adoc", "h.csv",
                                  "i.xml", "j.nxml", "k.tex", "l.vtt", "m.odt", "n.txt"])
def test_offline_formats_are_supported(name):
    check_supported(name, ParseOptions())


@pytest.mark.parametrize(("name", "reason"), [("x.bin", "unsupported file type: .bin"),
                                              ("Makefile", "no extension"),
                                              ("scan.png", "OCR is off")])
def test_unsupported_files_are_skipped_with_a_reason(name, reason):
    with pytest.raises(UnsupportedDocumentError, match=reason):
        check_supported(name, ParseOptions(ocr=OcrMode.OFF))


def test_json_contract_has_exactly_the_documented_keys():
    result = IngestResult(collection="c", failures=[FailureItem(source="s", stage="parse", error="e")],
                          skipped=[SkippedItem(source="s2", reason="r")], flow_run_id="id", duration_s=1.23456)
    data = result.to_json_dict()
    assert set(data) == {"collection", "documents", "chunks", "pages", "failures", "skipped", "dead_letter", "mode",
                         "aborted", "duration_s", "stage_seconds", "flow_run_id"}
    assert set(data["documents"]) == {"seen", "new", "changed", "unchanged", "deleted", "failed", "skipped"}
    assert set(data["chunks"]) == {"embedded", "upserted", "deleted", "sparse_added"}
    assert data["failures"] == [{"source": "s", "path": "", "stage": "parse", "error": "e"}]
    assert data["skipped"] == [{"source": "s2", "path": "", "reason": "r"}]
    assert data["duration_s"] == 1.235


def test_exceptions_inherit_matching_builtins():
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(StoreError, ConnectionError)
