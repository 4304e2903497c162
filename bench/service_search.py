"""Search latency through the upload service's HTTP endpoint (``POST /api/v1/search``) on a ~10,000-chunk collection.

    python bench/service_search.py [--chunks 10000] [--limit 10] [--json] [--out bench/results/service-search.json]

In a temporary DOCINGEST_HOME: (1) `docingest ingest` of a few small Markdown files makes the collection ``svc-bench``
the way a real run does (alias -> ``svc-bench__v1``, BM25 sparse vector, model recorded in the points); (2) this
process adds ``--chunks`` points built from the dbpedia entity abstracts (../shared/retrieval/dbpedia-entity-subset,
5,000 abstracts, each split into two chunks: its first and second half, headed by the title), shaped like the
ingested chunks (an ingested point's payload as the template; dense vectors from the collection's model, BM25 from
the encoder ingest uses), then the end-of-run upkeep (flush; HNSW only past DOCINGEST_INDEX_FROM_POINTS); (3) the 50
dbpedia queries through ``docingest.retrieval.search`` in this process, per mode; (4) the store closed,
`docingest search --json` in every mode must find the added chunks; (5) `docingest serve` on a free loopback port and
the same queries over HTTP (httpx, one keep-alive client, sequential, HS256 bearer token), per mode.

Per mode (dense, bm25, hybrid with RRF): 5 warm-up queries, then 50 queries x 3 rounds; client-side wall time per
request (for HTTP: the query's embedding, the store query, auth, JSON and the loopback round trip; in-process: the
first two). Reported: p50/p95/max in ms, the collection's point count, and the phases' seconds. The target it is
read against: search p95 under 100 ms for a 10k-chunk collection. Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DBPEDIA = REPO.parent / "shared" / "retrieval" / "dbpedia-entity-subset"
COLLECTION = "svc-bench"
MODES = [("dense", "rrf"), ("bm25", "rrf"), ("hybrid", "rrf")]
WARMUP, ROUNDS = 5, 3
TARGET_P95_MS = 100.0
SEED_DOCS = {
    "guide.md": "# Ingestion guide\n\nDocuments are parsed, chunked, embedded and written to Qdrant.\n\n"
                "## Search\n\nDense, BM25 and hybrid search over the chunks of a collection.\n",
    "notes.md": "# Release notes\n\nThe upload service accepts resumable uploads and answers searches.\n\n"
                "## Latency\n\nSearch latency is measured through the HTTP endpoint.\n",
    "faq.md": "# FAQ\n\nWhere is the store? In the folder DOCINGEST_HOME names, under qdrant.\n",
}
EXE = str(Path(sys.executable).with_name("docingest"))


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))], 2)


def _stats(latencies: list[float]) -> dict:
    return {"n": len(latencies), "p50_ms": _percentile(latencies, 0.5), "p95_ms": _percentile(latencies, 0.95),
            "max_ms": round(max(latencies), 2), "mean_ms": round(sum(latencies) / len(latencies), 2)}


def _loadavg() -> list[float]:
    """1/5/15-minute load averages: other work on the machine shows up in the timings."""
    return [round(x, 2) for x in os.getloadavg()]


def _halves(text: str) -> tuple[str, str]:
    words = text.split()
    mid = len(words) // 2
    first, second = " ".join(words[:mid]), " ".join(words[mid:])
    return (first or second or text), (second or first or text)


def seed_collection(home: Path, scratch: Path) -> float:
    """`docingest ingest` of a few Markdown files: the collection with docingest's own metadata."""
    src = scratch / "seed"
    src.mkdir()
    for name, text in SEED_DOCS.items():
        (src / name).write_text(text)
    started = time.perf_counter()
    proc = subprocess.run([EXE, "ingest", str(src), "-c", COLLECTION], env={**os.environ, "DOCINGEST_HOME": str(home)},
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"docingest ingest failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def add_chunks(chunks: int) -> dict:
    """Upsert ``chunks`` dbpedia chunks shaped like the ingested ones into the collection (this process opens the
    store; the caller closes it)."""
    from docingest.core.embed import embed_texts, load_model
    from docingest.core.ids import document_id, document_version, point_id
    from docingest.core.sparse import SPARSE_VECTOR, encoder, sparse_text
    from docingest.core.store import QdrantStore
    from docingest.settings import get_settings
    from docingest.targets import resolve_location

    docs = [json.loads(line) for line in (DBPEDIA / "corpus.jsonl").read_text().splitlines() if line.strip()]
    if chunks > 2 * len(docs):
        raise SystemExit(f"--chunks {chunks}: at most {2 * len(docs)} (two per abstract)")
    store = QdrantStore(resolve_location())
    physical = store.resolve(COLLECTION)
    template = next(iter(store.points(physical)))["payload"]
    language = store.sparse_language(physical)
    recorded, backend = store.collection_model(physical)
    if language is None or recorded is None:
        raise RuntimeError(f"the ingested collection {physical!r} lacks BM25 vectors or a recorded model: {template}")
    settings = get_settings()
    model = load_model(recorded, settings.embed.device, backend)
    bm25 = encoder(language)

    rows = []  # (path, content hash, chunk_index, title, text)
    for doc in docs:
        title = (doc.get("title") or "").strip() or doc["_id"]
        slug = doc["_id"].strip("<>").removeprefix("dbpedia:")
        body = (doc.get("text") or "").strip() or title
        content_hash = hashlib.sha256(f"# {title}\n\n{body}\n".encode()).hexdigest()
        for n, half in enumerate(_halves(body)):
            rows.append((f"dbpedia/{slug}.md", content_hash, n, title, half))
    rows = rows[:chunks]
    texts = [sparse_text([title], text) for *_, title, text in rows]  # the contextualized text ingest embeds
    started = time.perf_counter()
    vectors = embed_texts(model, texts)
    embed_s = time.perf_counter() - started
    sparse = bm25.documents(texts)

    source_uri = template["source_uri"]
    chunk_count: dict[str, int] = {}
    for path, *_ in rows:
        chunk_count[path] = chunk_count.get(path, 0) + 1
    now = time.time()
    points = []
    for (path, content_hash, n, title, text), vector, sp in zip(rows, vectors, sparse, strict=True):
        doc_id = document_id(source_uri, path)
        version = document_version(content_hash, template["fingerprint"])
        payload = {**template, "doc_id": doc_id, "uri": f"{source_uri.rstrip('/')}/{path}", "path": path,
                   "content_hash": content_hash, "version": version, "chunk_index": n,
                   "chunk_count": chunk_count[path], "headings": [title], "pages": [], "text": text,
                   "ingested_at": now, "sparse_model": bm25.name}
        points.append({"id": point_id(doc_id, version, n), "vector": vector, "payload": payload,
                       "sparse": {SPARSE_VECTOR: sp}})
    started = time.perf_counter()
    store.upsert(physical, points, 256)
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    upkeep = store.maintain(physical)
    maintain_s = time.perf_counter() - started
    return {"physical": physical, "model": recorded, "model_backend": backend, "bm25": bm25.name,
            "points": store.count(physical), "added": len(points), "hnsw_index_built": bool(upkeep.indexed),
            "embed_s": round(embed_s, 1), "upsert_s": round(upsert_s, 1), "maintain_s": round(maintain_s, 1)}


def in_process(queries: list[str], limit: int) -> dict:
    """The queries through ``docingest.retrieval.search`` (the function the endpoint runs), per mode."""
    from docingest.retrieval import search

    out = {}
    for mode, fusion in MODES:
        for query in queries[:WARMUP]:
            search(query, COLLECTION, limit, mode=mode, fusion=fusion)
        latencies, empty, added = [], 0, 0
        for _ in range(ROUNDS):
            for query in queries:
                started = time.perf_counter()
                hits = search(query, COLLECTION, limit, mode=mode, fusion=fusion)
                latencies.append((time.perf_counter() - started) * 1000)
                if hits.mode != mode:
                    raise RuntimeError(f"asked for {mode}, search answered {hits.mode}")
                empty += not hits
                added += any(h.path.startswith("dbpedia/") for h in hits)
        out[mode if mode != "hybrid" else f"hybrid-{fusion}"] = {
            **_stats(latencies), "empty_answers": empty, "answers_with_added_chunks": added}
    return out


def cli_check(home: Path, query: str, limit: int) -> dict:
    """`docingest search --json` in every mode (the store closed in this process) must return added chunks."""
    found = {}
    for mode, fusion in MODES:
        proc = subprocess.run([EXE, "search", query, "-c", COLLECTION, "--json", "--mode", mode, "--fusion", fusion,
                               "-k", str(limit)], env={**os.environ, "DOCINGEST_HOME": str(home)},
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"docingest search --mode {mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        answer = json.loads(proc.stdout)
        added = [h for h in answer["hits"] if h["path"].startswith("dbpedia/")]
        if answer.get("mode") != mode or not added:
            raise RuntimeError(f"docingest search --mode {mode} found none of the added chunks: {proc.stdout[:2000]}")
        found[mode] = {"hits": len(answer["hits"]), "added_chunk_hits": len(added), "top_path": added[0]["path"]}
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(home: Path, secret: str, log: Path) -> tuple[subprocess.Popen, str, float]:
    import httpx

    port = _free_port()
    env = {**os.environ, "DOCINGEST_HOME": str(home), "DOCINGEST_JWT_SECRET": secret,
           "DOCINGEST_RATE_LIMIT_REQUESTS_PER_MIN": "100000"}
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen([EXE, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docingest serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_service(proc)
    raise RuntimeError(f"docingest serve did not answer /health in 180 s:\n{log.read_text()[-3000:]}")


def stop_service(proc: subprocess.Popen) -> float:
    started = time.perf_counter()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.perf_counter() - started


def over_http(base: str, secret: str, queries: list[str], limit: int) -> dict:
    """The queries through ``POST /api/v1/search``: one keep-alive client, one request at a time."""
    import httpx
    import jwt

    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 3 * 3600, "collections": ["*"]}, secret,
                       algorithm="HS256")
    out = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        def ask(query: str, mode: str, fusion: str) -> dict:
            response = client.post("/api/v1/search", json={"collection": COLLECTION, "query": query, "limit": limit,
                                                           "mode": mode, "fusion": fusion})
            if response.status_code != 200:
                raise RuntimeError(f"search {mode} {query!r}: HTTP {response.status_code} {response.text[:500]}")
            return response.json()

        for mode, fusion in MODES:
            warmup = []
            for query in queries[:WARMUP]:
                started = time.perf_counter()
                answer = ask(query, mode, fusion)
                warmup.append((time.perf_counter() - started) * 1000)
                if answer["mode"] != mode:
                    raise RuntimeError(f"asked for {mode}, the service answered {answer['mode']}")
            latencies, empty, added = [], 0, 0
            for _ in range(ROUNDS):
                for query in queries:
                    started = time.perf_counter()
                    answer = ask(query, mode, fusion)
                    latencies.append((time.perf_counter() - started) * 1000)
                    empty += not answer["hits"]
                    added += any(h["path"].startswith("dbpedia/") for h in answer["hits"])
            out[mode if mode != "hybrid" else f"hybrid-{fusion}"] = {
                **_stats(latencies), "empty_answers": empty, "answers_with_added_chunks": added,
                "first_warmup_ms": round(warmup[0], 1)}
    return out


def run(chunks: int, limit: int) -> dict:
    bench_started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="docingest-service-search-bench-"))
    home = scratch / "home"
    os.environ["DOCINGEST_HOME"] = str(home)  # before docingest reads its settings in this process
    for key in ("DOCINGEST_QDRANT_URL", "DOCINGEST_QDRANT_PATH"):
        os.environ.pop(key, None)
    secret = hashlib.sha256(os.urandom(32)).hexdigest()
    queries = [json.loads(line)["text"] for line in (DBPEDIA / "queries.jsonl").read_text().splitlines()
               if line.strip()]
    proc = None
    report: dict = {"collection": COLLECTION, "chunks": chunks, "limit": limit, "queries": len(queries),
                    "warmup": WARMUP, "rounds": ROUNDS, "target_p95_ms": TARGET_P95_MS,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()}}
    phases: dict = {}
    try:
        phases["seed_ingest_s"] = round(seed_collection(home, scratch), 1)
        started = time.perf_counter()
        built = add_chunks(chunks)
        phases["build_s"] = round(time.perf_counter() - started, 1)
        report["store"] = built
        phases["loadavg_before_in_process"] = _loadavg()
        report["in_process"] = in_process(queries, limit)
        from docingest.core.store import close_backends

        close_backends()
        started = time.perf_counter()
        report["cli_check"] = cli_check(home, queries[0], limit)
        phases["cli_check_s"] = round(time.perf_counter() - started, 1)
        proc, base, startup = start_service(home, secret, scratch / "serve.log")
        phases["service_start_s"] = round(startup, 1)
        phases["loadavg_before_http"] = _loadavg()
        report["http"] = over_http(base, secret, queries, limit)
        phases["loadavg_after_http"] = _loadavg()
    finally:
        if proc is not None:
            phases["service_stop_s"] = round(stop_service(proc), 1)
            phases["service_exit_code"] = proc.returncode
        shutil.rmtree(scratch, ignore_errors=True)
    phases["total_s"] = round(time.perf_counter() - bench_started, 1)
    report["phases"] = phases
    report["http_overhead_p50_ms"] = {mode: round(row["p50_ms"] - report["in_process"][mode]["p50_ms"], 2)
                                      for mode, row in report["http"].items()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000, help="dbpedia chunks added to the collection")
    parser.add_argument("--limit", type=int, default=10, help="hits per search")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = run(args.chunks, args.limit)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
        return
    store = report["store"]
    print(f"collection {COLLECTION} ({store['physical']}): {store['points']} points ({store['added']} added), "
          f"HNSW index {'built' if store['hnsw_index_built'] else 'not built (exact search)'}; "
          f"{report['queries']} queries x {ROUNDS} rounds, limit {report['limit']}, {report['machine']['cpus']} CPUs")
    print(f"{'mode':<12}{'http p50':>10}{'http p95':>10}{'http max':>10}{'api p50':>10}{'api p95':>10}"
          f"{'api max':>10}{'p95<100':>9}")
    for mode, row in report["http"].items():
        api = report["in_process"][mode]
        print(f"{mode:<12}{row['p50_ms']:>10}{row['p95_ms']:>10}{row['max_ms']:>10}{api['p50_ms']:>10}"
              f"{api['p95_ms']:>10}{api['max_ms']:>10}{'yes' if row['p95_ms'] < TARGET_P95_MS else 'no':>9}")
    print("phases (s): " + ", ".join(f"{k} {v}" for k, v in report["phases"].items()))


if __name__ == "__main__":
    main()
