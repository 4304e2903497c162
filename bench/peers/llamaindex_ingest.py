"""The LlamaIndex peer: one ingest pass over a corpus with an IngestionPipeline, configured as a careful user would.

    PEER_PYTHON bench/peers/llamaindex_ingest.py CORPUS_DIR STATE_DIR --model MODEL_DIR

Runs in the peers' own virtual environment (bench/peers/venv.py; docingest is not installed there). A first run over
STATE_DIR ingests everything; a later one re-syncs: LlamaIndex's docstore upserts skip unchanged documents and replace
changed ones (their old points deleted from Qdrant by document id). The same choices as bench/naive.py where LlamaIndex
lets us make them: Docling's model-free PDF pipeline, the HybridChunker with the model's tokenizer at 256 tokens, the
same model folder (MODEL_DIR: bench/run.py passes the bundled copy docingest resolves), encode batches of 64, Qdrant
local mode. Document ids are paths relative to the corpus and point ids derive from them, so re-runs are deterministic.
Prints one JSON line: wall time, per-stage seconds, documents seen, documents changed, chunks embedded, points stored.
"""

# ruff: noqa: E402 (the clock starts before the imports)
from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the imports, as bench/naive.py measures

import argparse
import json
import os
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local folder: never ask the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from docling.datamodel.base_models import InputFormat
from docling.datamodel.pipeline_options import NativePdfPipelineOptions
from docling.document_converter import DocumentConverter, NativePdfFormatOption
from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.schema import TransformComponent
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.node_parser.docling import DoclingNodeParser
from llama_index.readers.docling import DoclingReader
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient

SUFFIXES = {".md", ".html", ".htm", ".docx", ".pptx", ".xlsx", ".csv", ".pdf", ".xml", ".adoc", ".asciidoc",
            ".tex", ".odt", ".ods", ".odp", ".xhtml", ".nxml"}  # bench/naive.py's list
COLLECTION = "llamaindex"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("state", type=Path, help="folder for the Qdrant collection and the persisted docstore")
    parser.add_argument("--model", type=Path, required=True, help="the sentence-transformers model folder")
    args = parser.parse_args()
    corpus = args.corpus.resolve()
    args.state.mkdir(parents=True, exist_ok=True)
    docstore_path = args.state / "docstore.json"

    pages: dict[str, int] = {}
    reader, pipeline, client, timed = build(corpus, args.state / "qdrant", docstore_path, args.model, pages)
    setup_s = time.perf_counter() - STARTED

    t0 = time.perf_counter()
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    documents, failed = read(reader, files)
    t1 = time.perf_counter()
    changed = sum(pipeline.docstore.get_document_hash(d.id_) != d.hash for d in documents)  # new or edited
    nodes = pipeline.run(documents=documents, store_doc_text=False)  # upserts compare hashes: keep no JSON copies
    t2 = time.perf_counter()
    pipeline.docstore.persist(str(docstore_path))
    points = client.count(COLLECTION).count if client.collection_exists(COLLECTION) else 0
    client.close()
    t3 = time.perf_counter()

    stages = {"setup": setup_s, "read": t1 - t0, **{name: step.seconds for name, step in timed.items()},
              "store": (t2 - t1) - sum(step.seconds for step in timed.values()), "persist": t3 - t2}
    print(json.dumps({"wall_s": time.perf_counter() - STARTED, "setup_s": setup_s, "documents": len(files),
                      "failed": failed, "changed": changed, "chunks": sum(n.embedding is not None for n in nodes),
                      "pages": sum(pages[doc_id] for doc_id in {n.ref_doc_id for n in nodes}),  # as naive.py counts
                      "points": points, "stages": stages}))


def build(corpus: Path, qdrant_dir: Path, docstore_path: Path, model_dir: Path, pages: dict[str, int]):
    """The reader, the pipeline (node parser, embedding, Qdrant, docstore upserts), the Qdrant client and the timed
    transformations. ``pages`` is filled with each converted document's page count, keyed by document id."""

    def document_id(doc, file_path) -> str:
        """The path relative to the corpus: stable across runs, so the docstore recognises the document."""
        doc_id = Path(file_path).relative_to(corpus).as_posix()
        pages[doc_id] = len(doc.pages)
        return doc_id

    def node_id(i: int, node) -> str:
        """Chunk ``i`` of a document: a UUID (what Qdrant accepts as a point id) derived from the document id."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{node.id_}#{i}"))

    converter = DocumentConverter(format_options={
        InputFormat.PDF: NativePdfFormatOption(pipeline_options=NativePdfPipelineOptions())})
    reader = DoclingReader(export_type=DoclingReader.ExportType.JSON, doc_converter=converter, id_func=document_id)
    tokenizer = HuggingFaceTokenizer.from_pretrained(model_name=str(model_dir), max_tokens=256)
    timed = {"chunk": Timed(inner=DoclingNodeParser(chunker=HybridChunker(tokenizer=tokenizer), id_func=node_id)),
             "embed": Timed(inner=HuggingFaceEmbedding(model_name=str(model_dir), device="cpu", embed_batch_size=64))}
    client = QdrantClient(path=str(qdrant_dir))
    docstore = (SimpleDocumentStore.from_persist_path(str(docstore_path)) if docstore_path.exists()
                else SimpleDocumentStore())
    pipeline = IngestionPipeline(
        transformations=list(timed.values()), vector_store=QdrantVectorStore(COLLECTION, client=client),
        docstore=docstore, docstore_strategy=DocstoreStrategy.UPSERTS,
        disable_cache=True)  # the transformation cache only pays when the same nodes go through twice in one process
    return reader, pipeline, client, timed


def read(reader, files: list[Path]) -> tuple[list, int]:
    """Convert each file with the reader; like bench/naive.py, skip (and count) what Docling cannot convert."""
    documents, failed = [], 0
    for path in files:
        try:
            documents += reader.load_data(path)
        except Exception:  # noqa: BLE001 - one bad file must not end the pass
            failed += 1
    return documents, failed


class Timed(TransformComponent):
    """A pipeline step that runs another and adds up its seconds: the per-stage times of the report, measured
    without changing what the pipeline does."""

    inner: TransformComponent
    seconds: float = 0.0

    def __call__(self, nodes, **kwargs):
        started = time.perf_counter()
        out = self.inner(nodes, **kwargs)
        self.seconds += time.perf_counter() - started
        return out


if __name__ == "__main__":
    main()
