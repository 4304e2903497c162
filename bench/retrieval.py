"""Retrieval quality and query latency per search mode (dense, bm25, hybrid RRF, hybrid DBSF) and store backend.

    python bench/retrieval.py                         # ../shared/retrieval/dbpedia-entity-subset (BEIR format)
    python bench/retrieval.py --set corpus-eval       # tests/data/eval on the shared corpus, through the CLI
    python bench/retrieval.py [--backends edge,local] [--json] [--out bench/results/retrieval.json]
    python bench/retrieval.py --backends edge --embed-backend int8   # the high-throughput preset's vectors

``dbpedia``: every entity abstract (title + text) becomes one point, dense with the bundled model and BM25 with the
same encoder docingest's ingest uses, written through docingest's store into each backend (Qdrant Edge; qdrant-client
local mode as the server's stand-in; a server when DOCINGEST_QDRANT_URL is set); each query runs in every mode through
docingest's own search planning. Reported: nDCG@10 and recall@10 (the metrics of `docingest eval`), and query latency
p50/p95 in ms (the store query only; the query's embedding is reported once, separately).
``corpus-eval``: `docingest ingest` of the shared corpus files the query set names, then `docingest eval --mode M`.
Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DBPEDIA = REPO.parent / "shared" / "retrieval" / "dbpedia-entity-subset"
MODES = [("dense", "rrf"), ("bm25", "rrf"), ("hybrid", "rrf"), ("hybrid", "dbsf")]
K = 10


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))], 2)


def dbpedia(backends: list[str], scratch: Path, embed_backend: str = "torch") -> dict:
    from docingest.core.embed import embed_texts, load_model
    from docingest.core.sparse import SPARSE_VECTOR, encoder, sparse_text
    from docingest.core.store import QdrantLocation, QdrantStore, close_backends
    from docingest.evaluate import build_report, load_qrels, load_queries, rank_documents, split_queries
    from docingest.retrieval import make_search
    from docingest.settings import get_settings

    docs = [json.loads(line) for line in (DBPEDIA / "corpus.jsonl").read_text().splitlines() if line.strip()]
    queries = load_queries(DBPEDIA / "queries.jsonl")
    qrels = load_qrels(DBPEDIA / "qrels" / "test.tsv")
    evaluated, _ = split_queries(queries, qrels)
    settings = get_settings()
    model = load_model(settings.embed.model, settings.embed.device, embed_backend)
    texts = [sparse_text([d.get("title") or ""], d.get("text") or "") for d in docs]
    started = time.perf_counter()
    vectors = embed_texts(model, texts)
    encode_s = time.perf_counter() - started
    bm25 = encoder()
    sparse = bm25.documents(texts)
    started = time.perf_counter()
    query_vectors = embed_texts(model, [queries[q] for q in evaluated])
    query_embed_ms = (time.perf_counter() - started) * 1000 / max(1, len(evaluated))
    points = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, d["_id"])), "vector": v, "sparse": {SPARSE_VECTOR: s},
               "payload": {"corpus_id": d["_id"], "text": t, "sparse_model": bm25.name}}
              for d, t, v, s in zip(docs, texts, vectors, sparse, strict=True)]
    out: dict = {"embed_backend": embed_backend, "documents": len(docs), "queries": len(evaluated),
                 "encode_s": round(encode_s, 1),
                 "query_embed_ms": round(query_embed_ms, 2), "backends": {}}
    for backend in backends:
        if backend == "server":
            location = QdrantLocation(url=os.environ["DOCINGEST_QDRANT_URL"])
        else:
            location = QdrantLocation(path=scratch / backend, engine="edge" if backend == "edge" else "qdrant-client")
        store = QdrantStore(location)
        physical = store.ensure_collection("dbpedia-bench", model.info.dimension, sparse=(SPARSE_VECTOR,))
        store.upsert(physical, points, 256)
        rows = {}
        for mode, fusion in MODES:
            rankings, latencies = {}, []
            for qid, vector in zip(evaluated, query_vectors, strict=True):
                search = make_search(mode, vector, queries[qid], "english", 100, fusion, 100)
                started = time.perf_counter()
                hits = store.find(physical, search)
                latencies.append((time.perf_counter() - started) * 1000)
                rankings[qid] = rank_documents(hits, "corpus_id", K)
            report = build_report("dbpedia", queries, qrels, rankings, K, "corpus_id")
            rows[f"{mode}" if mode != "hybrid" else f"hybrid-{fusion}"] = {
                "ndcg@10": round(report.ndcg, 4), "recall@10": round(report.recall, 4),
                "p50_ms": _percentile(latencies, 0.5), "p95_ms": _percentile(latencies, 0.95)}
        out["backends"][backend] = rows
        if backend == "server":
            store.drop_collection(physical)
        close_backends()
    return out


def corpus_eval(scratch: Path) -> dict:
    """The CLI end to end on tests/data/eval: ingest the 14 shared-corpus files it names, eval in every mode."""
    data = REPO / "tests" / "data" / "eval"
    files = [line for line in (data / "documents.txt").read_text().splitlines() if line and not line.startswith("#")]
    corpus = REPO.parent / "shared" / "corpus" / "docling-testdata"
    src = scratch / "eval-src"
    for rel in files:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(corpus / rel, src / rel)
    env = {**os.environ, "DOCINGEST_HOME": str(scratch / "home")}
    exe = str(Path(sys.executable).with_name("docingest"))
    subprocess.run([exe, "ingest", str(src), "-c", "eval"], env=env, check=True, capture_output=True)
    rows = {}
    for mode, fusion in MODES:
        started = time.perf_counter()
        proc = subprocess.run([exe, "eval", "-c", "eval", "--queries", str(data / "queries.jsonl"), "--qrels",
                               str(data / "qrels.tsv"), "--k", "10", "--mode", mode, "--fusion", fusion, "--json"],
                              env=env, capture_output=True, text=True, check=True)
        report = json.loads(proc.stdout)
        rows[mode if mode != "hybrid" else f"hybrid-{fusion}"] = {
            "ndcg@10": round(report["ndcg"], 4), "recall@10": round(report["recall"], 4),
            "eval_command_s": round(time.perf_counter() - started, 1)}
    return {"queries": report["queries"], "backends": {"edge": rows}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=["dbpedia", "corpus-eval"], default="dbpedia")
    parser.add_argument("--backends", default="edge,local" + (",server" if os.environ.get("DOCINGEST_QDRANT_URL") else ""))
    parser.add_argument("--embed-backend", default="torch", choices=["torch", "int8"],
                        help="dbpedia: the dense vectors' backend (int8: the high-throughput preset's)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="docingest-retrieval-bench-"))
    try:
        report = (dbpedia(args.backends.split(","), scratch, args.embed_backend) if args.set == "dbpedia"
                  else corpus_eval(scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["set"] = args.set
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.set}: " + ", ".join(f"{k} {v}" for k, v in report.items() if k not in ("backends", "set")))
    print(f"{'backend':<8}{'mode':<14}{'nDCG@10':>9}{'recall@10':>11}{'p50 ms':>9}{'p95 ms':>9}")
    for backend, rows in report["backends"].items():
        for mode, row in rows.items():
            print(f"{backend:<8}{mode:<14}{row['ndcg@10']:>9.3f}{row['recall@10']:>11.3f}"
                  f"{row.get('p50_ms', '-'):>9}{row.get('p95_ms', '-'):>9}")


if __name__ == "__main__":
    main()
