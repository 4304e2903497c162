"""Scanned documents made for the OCR tests: pages of text rendered with Pillow, saved as image-only PDFs, TIFFs and
PNGs, and a mixed PDF (a born-digital page followed by a scanned one)."""

from __future__ import annotations

from pathlib import Path

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def page_image(lines: list[str], rotate: int = 0, size: tuple[int, int] = (1700, 2200)):
    """A white page at 200 DPI with the lines in black (DejaVu Sans when installed), rotated by ``rotate`` degrees."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(FONT, 40)
    except OSError:
        font = ImageFont.load_default(size=40)
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((150, 180 + 70 * n), line, font=font, fill=0)
    return image.rotate(rotate, expand=True) if rotate else image


def scanned_pdf(path: Path, pages: list[list[str]], rotate: int = 0) -> Path:
    """An image-only PDF: one scanned page per entry, no text layer."""
    images = [page_image(lines, rotate) for lines in pages]
    images[0].save(path, save_all=True, append_images=images[1:], resolution=200)
    return path


def multipage_tiff(path: Path, pages: list[list[str]]) -> Path:
    images = [page_image(lines) for lines in pages]
    images[0].save(path, save_all=True, append_images=images[1:], compression="tiff_deflate", dpi=(200, 200))
    return path


def mixed_pdf(path: Path, born_digital: Path, scanned_lines: list[str], tmp: Path) -> Path:
    """The first page of a born-digital PDF, then a scanned page."""
    import pypdfium2 as pdfium

    scan = scanned_pdf(tmp / "scan-page.pdf", [scanned_lines])
    out = pdfium.PdfDocument.new()
    with pdfium.PdfDocument(str(born_digital)) as text_pdf, pdfium.PdfDocument(str(scan)) as scan_pdf:
        out.import_pages(text_pdf, [0])
        out.import_pages(scan_pdf, [0])
        out.save(str(path))
    out.close()
    return path
