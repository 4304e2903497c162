"""OCR helpers without Tesseract: text-layer judgement, TSV grouping, language checks, fingerprints per kind."""

import pytest

from docingest.core import ocr
from docingest.core.plan import Profile
from docingest.exceptions import ConfigurationError

pytestmark = pytest.mark.unit


def test_a_text_layer_is_usable_when_it_has_mapped_characters():
    assert ocr.text_layer_usable("The northern pier was repaired in March.")
    assert not ocr.text_layer_usable("")
    assert not ocr.text_layer_usable("  3  ")  # a page number alone
    assert not ocr.text_layer_usable("(cid:12)(cid:7)(cid:88)(cid:3) ab")
    assert not ocr.text_layer_usable("\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd ok")


def test_tsv_words_become_paragraphs_in_reading_order():
    header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
    rows = [
        "5\t1\t1\t1\t1\t1\t10\t20\t30\t10\t96\tSecond",
        "5\t1\t1\t1\t1\t2\t45\t20\t30\t10\t94\tpage",
        "5\t1\t1\t1\t2\t1\t10\t35\t30\t10\t90\tviolet",
        "4\t1\t1\t1\t2\t0\t10\t35\t30\t10\t-1\t",
        "5\t1\t2\t1\t1\t1\t10\t80\t20\t10\t80\theron",
        "5\t1\t2\t1\t1\t2\t40\t80\t20\t10\t-1\t ",
    ]
    blocks = ocr.parse_tsv(header + "\n".join(rows))
    assert [b.text for b in blocks] == ["Second page violet", "heron"]
    assert blocks[0].box == (10, 20, 75, 45) and blocks[0].confidence == pytest.approx(93.33, abs=0.01)


def test_unknown_languages_are_one_configuration_error(monkeypatch):
    monkeypatch.setattr(ocr, "installed_languages", lambda: ("eng", "osd"))
    ocr.check_languages("eng")
    with pytest.raises(ConfigurationError, match=r"unknown OCR language 'xyz' .*installed: eng;"):
        ocr.check_languages("eng+xyz")
    with pytest.raises(ConfigurationError):
        ocr.check_languages("+")


def test_ocr_counts_only_in_the_fingerprint_of_images_and_pdfs():
    profile = Profile(pdf_mode="fast", ocr=True, max_tokens=256, model=None, fingerprint="base",
                      format_fingerprints=(("docx", "plugin"),), ocr_fingerprint="with-ocr")
    assert profile.fingerprint_for("a/scan.PDF") == profile.fingerprint_for("b.tiff") == "with-ocr"
    assert profile.fingerprint_for("notes.md") == "base" and profile.fingerprint_for("x.docx") == "plugin"
    without = Profile(pdf_mode="fast", ocr=False, max_tokens=256, model=None, fingerprint="base")
    assert without.fingerprint_for("scan.pdf") == "base"
