"""The naive baseline: the same libraries, one document at a time — convert, chunk, encode, upsert — the script a
user writes first. Same converter options (Docling's model-free PDF pipeline), same HybridChunker with the model's
tokenizer, same model, same Qdrant local mode. Prints one JSON line with wall time, per-stage seconds, counts.

    python bench/naive.py CORPUS_DIR QDRANT_DIR [--texts-out FILE]   (FILE: the embedded texts, for the raw limit)
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

SUFFIXES = {".md", ".html", ".htm", ".docx", ".pptx", ".xlsx", ".csv", ".pdf", ".xml", ".adoc", ".asciidoc",
            ".tex", ".odt", ".ods", ".odp", ".xhtml", ".nxml"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", type=Path)
    parser.add_argument("qdrant", type=Path)
    parser.add_argument("--texts-out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    from qdrant_client import QdrantClient, models
    from sentence_transformers import SentenceTransformer

    from docingest.core.embed import resolve_model_location

    location, _ = resolve_model_location("sentence-transformers/all-MiniLM-L6-v2")
    model = SentenceTransformer(location, device="cpu")
    converter, chunker = converter_and_chunker(model.tokenizer)
    client = QdrantClient(path=str(args.qdrant))
    if not client.collection_exists("naive"):
        client.create_collection("naive", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE))
    setup_s = time.perf_counter() - started

    stages = {"parse": 0.0, "chunk": 0.0, "embed": 0.0, "upsert": 0.0}
    docs = failed = chunks_total = pages = 0
    all_texts: list[str] = []
    for path in corpus_files(args.corpus):
        t0 = time.perf_counter()
        try:
            doc = converter.convert(path).document
        except Exception:  # noqa: BLE001 - the naive script skips what it cannot convert
            failed += 1
            stages["parse"] += time.perf_counter() - t0
            continue
        t1 = time.perf_counter()
        texts = chunk_texts(chunker, doc)
        t2 = time.perf_counter()
        vectors = model.encode(texts, batch_size=64) if texts else []
        t3 = time.perf_counter()
        if texts:
            client.upsert("naive", points=[
                models.PointStruct(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{path}#{i}")), vector=v.tolist(),
                                   payload={"path": str(path), "text": t})
                for i, (t, v) in enumerate(zip(texts, vectors, strict=True))])
        t4 = time.perf_counter()
        stages["parse"] += t1 - t0
        stages["chunk"] += t2 - t1
        stages["embed"] += t3 - t2
        stages["upsert"] += t4 - t3
        docs += 1
        pages += len(doc.pages) if texts else 0  # as docingest counts them: pages of the documents it ingested
        chunks_total += len(texts)
        all_texts += texts
    if args.texts_out:
        args.texts_out.write_text(json.dumps(all_texts))
    print(json.dumps({"wall_s": time.perf_counter() - started, "setup_s": setup_s, "documents": docs,
                      "failed": failed, "chunks": chunks_total, "pages": pages, "stages": stages}))


def corpus_files(corpus: Path) -> list[Path]:
    """The files the naive script reads, in its order."""
    return sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def converter_and_chunker(tokenizer):
    """Docling's converter (the model-free PDF pipeline) and the HybridChunker on the model's tokenizer, 256 tokens."""
    from docling.datamodel.base_models import InputFormat
    from docling.datamodel.pipeline_options import NativePdfPipelineOptions
    from docling.document_converter import DocumentConverter, NativePdfFormatOption
    from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
    from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer

    converter = DocumentConverter(format_options={
        InputFormat.PDF: NativePdfFormatOption(pipeline_options=NativePdfPipelineOptions())})
    return converter, HybridChunker(tokenizer=HuggingFaceTokenizer(tokenizer=tokenizer, max_tokens=256))


def chunk_texts(chunker, doc) -> list[str]:
    """The texts embedded for a converted document: each chunk contextualized (headings, then text), empty ones left out."""
    texts = [chunker.contextualize(chunk=c) for c in chunker.chunk(dl_doc=doc)]
    return [t for t in texts if t.strip()]


if __name__ == "__main__":
    main()
