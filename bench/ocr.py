"""OCR speed: pages per second of the default path's OCR (pypdfium2 rendering + Tesseract), on generated scans and
the shared corpus's scans, and the cost OCR adds to a born-digital PDF (none expected).

    .venv/bin/python bench/ocr.py [--pages 10] [--dpi 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "docling-testdata"
sys.path.insert(0, str(REPO / "tests" / "integration"))


def timed(path: Path, **options) -> dict:
    from docingest.core.parse import parse_document
    from docingest.options import ParseOptions, PdfMode

    started = time.perf_counter()
    parsed = parse_document(path, ParseOptions(**options), PdfMode.FAST)
    seconds = time.perf_counter() - started
    return {"file": path.name, "pages": parsed.pages, "ocr_pages": parsed.ocr_pages, "seconds": round(seconds, 2),
            "ocr_pages_per_s": round(parsed.ocr_pages / seconds, 2) if parsed.ocr_pages else None,
            "parser": parsed.parser}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10, help="pages of the generated scan")
    parser.add_argument("--dpi", type=int, default=300, help="rendering resolution for OCR")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from scans import scanned_pdf

    from docingest.core import ocr

    if not ocr.tesseract_available():
        print("Tesseract is not installed (bash scripts/system-deps.sh ocr)", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scan = scanned_pdf(Path(tmp) / f"generated-{args.pages}-pages.pdf",
                           [[f"Page {n} of a generated scan", "The harbour authority repaired the northern pier",
                             "and ships waited two days on average before they could unload."] for n in
                            range(1, args.pages + 1)])
        timed(scan, ocr_dpi=args.dpi)  # warm-up: Docling's converter is built once per process
        rows.append(timed(scan, ocr_dpi=args.dpi))
    for rel in ("ocr/sources/ocr_test_rotated_90.pdf", "ocr/sources/sample_with_rotation_mismatch.pdf",
                "ocr/sources/qr_bill_example.jpg", "ocr/sources/old_newspaper.png"):
        if (CORPUS / rel).exists():
            rows.append(timed(CORPUS / rel, ocr_dpi=args.dpi))
    born = CORPUS / "pdf/sources/normal_4pages.pdf"
    if born.exists():
        rows.append({**timed(born, ocr="off"), "file": f"{born.name} (--ocr off)"})
        rows.append({**timed(born, ocr_dpi=args.dpi), "file": f"{born.name} (--ocr auto)"})
    if args.json:
        print(json.dumps({"dpi": args.dpi, "tesseract": ocr.tesseract_version(), "rows": rows}, indent=2))
    else:
        print(f"| file | pages | OCR pages | seconds | OCR pages/s | parser |  (dpi {args.dpi}, tesseract "
              f"{ocr.tesseract_version()})\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['file']} | {r['pages']} | {r['ocr_pages']} | {r['seconds']} | {r['ocr_pages_per_s'] or '–'} "
                  f"| {r['parser']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
