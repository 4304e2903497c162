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


def test_cuda_encode_prepares_what_the_device_needs_and_measures_it(tmp_path):
    """bench/cuda_encode.py, on the CPU: `prepare` writes the chunk texts, the model with fp16 weights (what fits the
    device machine's 64 MiB) and reference vectors; `measure` reads them back, and its vectors from the fp16 copy cast
    to fp32 agree with the CPU's fp32 vectors."""
    import os

    from safetensors import safe_open

    sys.path.insert(0, str(REPO / "bench"))
    from make_corpus import generate

    generate(tmp_path / "mini", 6)
    data, out = tmp_path / "data", tmp_path / "report.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "src"))
    prepared = subprocess.run([sys.executable, "bench/cuda_encode.py", "prepare", "--out", str(data), "--corpora",
                               str(tmp_path / "mini")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    manifest = json.loads((data / "manifest.json").read_text())
    chunks = manifest["corpora"]["mini"]["chunks"]
    assert chunks > 6 and manifest["corpora"]["mini"]["failed"] == 0
    with safe_open(data / "model" / "model.safetensors", "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()}  # noqa: SIM118 - safe_open is no dict <= {"torch.float16", "torch.int64"}
    measured = subprocess.run([sys.executable, "bench/cuda_encode.py", "measure", "--data", str(data), "--device",
                               "cpu", "--dtypes", "fp32", "--batch-sizes", "4,16", "--repeats", "1", "--out", str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert measured.returncode == 0, measured.stderr[-3000:]
    row = json.loads(out.read_text())["corpora"]["mini"]
    assert row["chunks"] == chunks and row["tokenize_s"] >= 0  # (rounded to ms: 0 on a fast machine)
    fp32 = row["fp32"]
    assert set(fp32["raw_encode"]) == {"4", "16"} and all(r["chunks_per_s"] > 0 for r in fp32["raw_encode"].values())
    assert fp32["saturating_batch_size"] in (4, 16) and fp32["best"]["batch_size"] in (4, 16)
    assert str(fp32["best"]["batch_size"]) in fp32["docingest_pools"] and "64" in fp32["docingest_pools"]
    assert fp32["min_cosine_to_cpu_fp32"] > 0.999
    assert "mini" in measured.stdout and "fp32" in measured.stdout  # the table
