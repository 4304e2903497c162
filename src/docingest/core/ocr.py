"""OCR with the Tesseract CLI: pages of scanned PDFs and images become text blocks with page coordinates.

Docling's own OCR stages run inside its standard PDF pipeline, which needs the layout model's weights; on the default
(fast) path docingest renders each page that lacks a usable text layer with pypdfium2 (installed with Docling) and
reads it with Tesseract, page by page, under a time limit per page. Page segmentation mode 1 (automatic, with
orientation and script detection) reads pages scanned sideways or upside down; the coordinates come back in the
page's own frame.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

from docingest.core import faults
from docingest.exceptions import ConfigurationError

if TYPE_CHECKING:
    from PIL.Image import Image

PageCallback = Callable[[int, int], None]  # (pages done, pages to read)


class OcrPageError(Exception):
    """One page could not be read (timeout, Tesseract error); the document goes on without it."""


@dataclass
class OcrBlock:
    """One paragraph Tesseract found: its text and box in pixels (left, top, right, bottom) of the read image."""

    text: str
    box: tuple[float, float, float, float]
    confidence: float


@dataclass
class OcrPage:
    """The blocks of one page, in Tesseract's reading order, and the pixel size of the image they refer to."""

    width: int
    height: int
    blocks: list[OcrBlock] = field(default_factory=list)


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


@lru_cache(maxsize=1)
def installed_languages() -> tuple[str, ...]:
    """Tesseract's installed language data (``osd`` included), empty when Tesseract is not installed."""
    if not tesseract_available():
        return ()
    proc = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, timeout=30, check=False)
    lines = (proc.stdout or proc.stderr).splitlines()
    return tuple(sorted(line.strip() for line in lines[1:] if line.strip() and " " not in line.strip()))


@lru_cache(maxsize=1)
def tesseract_version() -> str:
    if not tesseract_available():
        return ""
    proc = subprocess.run(["tesseract", "--version"], capture_output=True, text=True, timeout=30, check=False)
    first = (proc.stdout or proc.stderr).splitlines()[:1]
    return first[0].split()[-1] if first else "unknown"


def check_languages(lang: str) -> None:
    """ConfigurationError (one line) for a language Tesseract has no data for, e.g. ``eng+xyz``."""
    installed = installed_languages()
    missing = [code for code in lang.split("+") if code and code not in installed]
    if not lang.strip("+") or missing:
        have = ", ".join(code for code in installed if code != "osd") or "none"
        raise ConfigurationError(
            f"unknown OCR language {'+'.join(missing) or lang!r} (option parse.ocr_lang; installed: {have}; add one with "
            f"apt install tesseract-ocr-<code>, e.g. tesseract-ocr-deu)")


_GARBAGE = re.compile(r"\(cid:\d+\)|\ufffd|[\ue000-\uf8ff]")


def text_layer_usable(text: str, min_chars: int = 8) -> bool:
    """Whether a page's text layer is worth keeping: some visible characters, mostly not unmapped glyphs
    (``(cid:12)``, U+FFFD or private-use code points, which a PDF without a Unicode map gives)."""
    visible = "".join(text.split())
    if len(visible) < min_chars:
        return False
    garbage = sum(len(m.group(0)) for m in _GARBAGE.finditer(visible))
    return garbage / len(visible) < 0.3


def read_image(image: Image, lang: str, timeout_s: float) -> OcrPage:
    """OCR one page image. Raises OcrPageError when Tesseract fails or passes ``timeout_s``."""
    faults.ocr_page()
    buffer = io.BytesIO()
    image.convert("L").save(buffer, format="PPM")  # uncompressed: nothing to encode or decode
    try:
        # One thread: Tesseract's OpenMP threads cost more than they give (0.7 s vs 1.4 s a page measured here),
        # and parse workers already run side by side.
        proc = subprocess.run(["tesseract", "stdin", "stdout", "-l", lang, "--psm", "1", "tsv"],
                              input=buffer.getvalue(), capture_output=True, timeout=timeout_s, check=False,
                              env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    except subprocess.TimeoutExpired:
        raise OcrPageError(f"OCR took longer than {timeout_s:g} s") from None
    if proc.returncode != 0:
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise OcrPageError(f"tesseract failed: {last[0]}")
    return OcrPage(width=image.width, height=image.height, blocks=parse_tsv(proc.stdout.decode("utf-8", "replace")))


def parse_tsv(tsv: str) -> list[OcrBlock]:
    """Tesseract's TSV words grouped into paragraphs (block, paragraph), lines joined with spaces, in reading order."""
    paragraphs: dict[tuple[int, int], list[dict]] = {}
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        if row.get("level") != "5" or not (row.get("text") or "").strip():
            continue
        paragraphs.setdefault((int(row["block_num"]), int(row["par_num"])), []).append(row)
    blocks = []
    for words in paragraphs.values():
        text = " ".join(w["text"].strip() for w in words)
        left = min(int(w["left"]) for w in words)
        top = min(int(w["top"]) for w in words)
        right = max(int(w["left"]) + int(w["width"]) for w in words)
        bottom = max(int(w["top"]) + int(w["height"]) for w in words)
        confidence = sum(float(w["conf"]) for w in words) / len(words)
        blocks.append(OcrBlock(text=text, box=(left, top, right, bottom), confidence=confidence))
    return blocks


def image_frames(path: str | Path) -> Iterator[Image]:
    """Every page of an image file (all frames of a multi-page TIFF), EXIF orientation applied."""
    from PIL import Image as PILImage
    from PIL import ImageOps, ImageSequence

    with PILImage.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            yield ImageOps.exif_transpose(frame.copy())


def render_pdf_pages(path: str | Path, page_numbers: list[int], dpi: int) -> Iterator[tuple[int, Image, float]]:
    """(page number, image, pixels per PDF point) for the given 1-based pages, rendered with pypdfium2."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:
        scale = dpi / 72
        for number in page_numbers:
            page = pdf[number - 1]
            try:
                bitmap = page.render(scale=scale, grayscale=True)
                yield number, bitmap.to_pil(), scale
            finally:
                page.close()
    finally:
        pdf.close()


def blank_pages(path: str | Path, page_numbers: list[int], dpi: int = 18) -> set[int]:
    """The pages among ``page_numbers`` that render as (near) white: nothing for OCR to read, so no OCR time."""
    from PIL import ImageStat

    blank = set()
    for number, image, _scale in render_pdf_pages(path, page_numbers, dpi):
        low = cast("tuple[int, int]", image.convert("L").getextrema())[0]  # a one-band image: (low, high)
        if low >= 240 or ImageStat.Stat(image.convert("L")).stddev[0] < 1.0:
            blank.add(number)
    return blank
