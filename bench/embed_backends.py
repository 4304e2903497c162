"""Embedding backends compared on the same chunks: speed (chunks/s) and retrieval quality (recall@10).

    python bench/embed_backends.py [--limit 1000]

Chunks come from the shared corpus (../shared/corpus/docling-testdata: Markdown, HTML, Office, AsciiDoc, CSV, XML
and PDF in fast mode, parsed and chunked as docingest does). The query set is built from it: for each chunk of at
least 12 words, its longest sentence cut to 12 words is a query whose relevant answer is that chunk. recall@10 = share
of queries whose chunk is among the 10 nearest chunks, queries and chunks embedded by the same backend.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "docling-testdata"
SUFFIXES = {".md", ".html", ".docx", ".adoc", ".asciidoc", ".csv", ".pdf", ".pptx", ".xlsx", ".xml"}


def chunk_texts(limit: int) -> list[str]:
    from docingest.core.chunk import chunk_document, make_chunker
    from docingest.core.embed import load_model
    from docingest.core.parse import parse_document
    from docingest.options import ChunkOptions, ParseOptions, PdfMode

    model = load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    chunker = make_chunker(model, ChunkOptions())
    texts: list[str] = []
    for path in sorted(p for p in CORPUS.rglob("*") if p.suffix.lower() in SUFFIXES and "groundtruth" not in str(p)):
        try:
            doc = parse_document(path, ParseOptions(), PdfMode.FAST).document
        except Exception:  # noqa: BLE001
            continue
        texts += [c.embed_text for c in chunk_document(doc, chunker)]
        if len(texts) >= limit:
            break
    return list(dict.fromkeys(texts))[:limit]


def queries_for(texts: list[str]) -> list[tuple[str, int]]:
    out = []
    for i, text in enumerate(texts):
        sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.split()) >= 6]
        if len(text.split()) >= 12 and sentences:
            out.append((" ".join(max(sentences, key=len).split()[:12]), i))
    return out


def measure(backend: str, texts: list[str], queries: list[tuple[str, int]]) -> dict:
    import numpy as np

    from docingest.core.embed import embed_texts, load_model

    model = load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu", backend)
    embed_texts(model, texts[:32])  # warm-up
    started = time.perf_counter()
    vectors = embed_texts(model, texts, 64)
    wall = time.perf_counter() - started
    q = embed_texts(model, [text for text, _ in queries], 64)
    top = np.argsort(-(q @ vectors.T), axis=1)[:, :10]
    hits = sum(1 for (_, want), row in zip(queries, top, strict=True) if want in row)
    return {"backend": backend, "chunks": len(texts), "encode_s": round(wall, 2),
            "chunks_per_s": round(len(texts) / wall, 1), "recall_at_10": round(hits / len(queries), 4),
            "queries": len(queries), "vectors": vectors}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "embed-backends.json")
    args = parser.parse_args()
    texts = chunk_texts(args.limit)
    queries = queries_for(texts)
    results = [measure(b, texts, queries) for b in ("torch", "int8")]
    base, fast = results
    cosine = float((base["vectors"] * fast["vectors"]).sum(axis=1).mean())
    for r in results:
        r.pop("vectors")
    report = {"results": results, "speedup": round(fast["chunks_per_s"] / base["chunks_per_s"], 2),
              "recall_delta_points": round(100 * (fast["recall_at_10"] - base["recall_at_10"]), 2),
              "mean_cosine_int8_vs_fp32": round(cosine, 4)}
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
