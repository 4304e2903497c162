"""A seconds-scale smoke of bench/: every phase runs on a tiny generated corpus and the report has its shape.
Timings are printed by the bench, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_bench_runs_every_phase_on_a_tiny_corpus(tmp_path, corpus):
    """Every phase, on five generated documents (Markdown and HTML) and a PDF: docingest and the naive script count
    the same documents and pages, and the table has pages/s."""
    import shutil

    import pypdfium2

    sys.path.insert(0, str(REPO / "bench"))
    from make_corpus import generate

    folder = tmp_path / "mini"
    generate(folder, 5)
    shutil.copy(corpus / "pdf/sources/multi_page.pdf", folder)
    pages = len(pypdfium2.PdfDocument(folder / "multi_page.pdf"))
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "bench/run.py", "--corpus", str(folder), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert set(phases) == {"docingest_full", "naive", "raw_encode", "noop_resync", "changed_1pct_resync"}
    assert phases["docingest_full"]["documents"] == 6 == phases["naive"]["documents"]
    assert phases["raw_encode"]["chunks"] == phases["naive"]["chunks"] > 0
    assert phases["noop_resync"]["chunks"] == 0  # nothing embedded
    assert phases["changed_1pct_resync"]["chunks"] > 0  # the edited document, embedded again
    assert set(report["ratios"]) == set(report["targets"]) and report["failed_documents"] == 0
    assert phases["docingest_full"]["pages"] == phases["naive"]["pages"] == pages > 1
    assert phases["docingest_full"]["pages_per_s"] > 0 and phases["noop_resync"]["pages"] == 0
    assert "pages/s" in proc.stderr


def test_generated_corpus_is_deterministic(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    from make_corpus import generate

    assert generate(tmp_path / "a", 30, seed=3) == generate(tmp_path / "b", 30, seed=3)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files_a) == 30 and any(p.suffix == ".html" for p in files_a)
    assert all((tmp_path / "a" / p).read_text() == (tmp_path / "b" / p).read_text() for p in files_a)
