"""The store on its own: synthetic points shaped like docingest's into every backend available here.

    python bench/store.py --points 200000 [--json] [--backends edge,local] [--out bench/results/store.json]

Backends: ``edge`` (Qdrant Edge in the process, the default store), ``local`` (qdrant-client's local mode, for
comparison only) and ``server`` when DOCINGEST_QDRANT_URL is set. Per backend, in fresh processes: (1) upsert N
points through docingest's store in the writer's batches (256), then the end-of-run upkeep (Edge builds its HNSW
index there once enough points are not indexed); (2) reopen the store and run 100 queries (limit 10, with payload).
Measured: upsert points/s, index-build seconds, reopen seconds, query p50/p95 in ms, peak RSS (MB) of each process.
Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

DIM, BATCH, QUERIES, SEED = 384, 256, 100, 7
TARGETS = {"edge_upsert_over_local": (">=", 5.0), "edge_reopen_s": ("<=", 1.0), "edge_query_p95_ms": ("<=", 50.0)}


def _location(backend: str, folder: Path):
    from docingest.core.store import QdrantLocation

    if backend == "server":
        return QdrantLocation(url=os.environ["DOCINGEST_QDRANT_URL"])
    return QdrantLocation(path=folder, engine="edge" if backend == "edge" else "qdrant-client")


def _vectors(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype("float32")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _payload(i: int) -> dict:
    doc = i // 4
    return {"doc_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"doc-{doc}")), "source_uri": "file:///bench/corpus",
            "version": f"{doc:016x}", "path": f"section-{doc % 97}/doc-{doc}.md", "uri": f"file:///bench/doc-{doc}.md",
            "chunk_index": i % 4, "headings": [f"Section {doc % 97}", f"Part {i % 4}"], "pages": [],
            "text": (f"Chunk {i} of document {doc}. " + "lorem ipsum dolor sit amet " * 24)[:680],
            "model": "sentence-transformers/all-MiniLM-L6-v2", "model_backend": "torch",
            "ingested_at": "2026-11-30T00:00:00+00:00"}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(backend: str, folder: Path, points: int) -> dict:
    from docingest.core.store import QdrantStore, close_backends

    store = QdrantStore(_location(backend, folder))
    physical = store.ensure_collection("bench", DIM)
    elapsed = 0.0
    for start in range(0, points, 8192):  # vectors made a slice at a time, not timed
        n = min(8192, points - start)
        vectors = _vectors(n, SEED + start)
        batch = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"point-{start + j}")), "vector": vectors[j],
                  "payload": _payload(start + j)} for j in range(n)]
        started = time.perf_counter()
        store.upsert(physical, batch, BATCH)
        elapsed += time.perf_counter() - started
    upkeep = store.maintain(physical)
    close_backends()
    return {"upsert_points_per_s": round(points / elapsed, 1), "upsert_s": round(elapsed, 2),
            "index_build_s": round(upkeep.seconds, 2) if upkeep.indexed else None, "write_peak_rss_mb": _peak_mb()}


def read(backend: str, folder: Path, points: int) -> dict:
    from docingest.core.store import QdrantStore

    started = time.perf_counter()
    store = QdrantStore(_location(backend, folder))
    count = store.count("bench")
    reopen = time.perf_counter() - started
    assert count == points, (count, points)
    latencies = []
    for vector in _vectors(QUERIES, SEED - 1):
        started = time.perf_counter()
        hits = store.query("bench", vector.tolist(), 10)
        latencies.append((time.perf_counter() - started) * 1000)
        assert len(hits) == 10 and hits[0][1].get("text")
    latencies.sort()
    return {"reopen_s": round(reopen, 3), "query_p50_ms": round(latencies[len(latencies) // 2], 2),
            "query_p95_ms": round(latencies[int(len(latencies) * 0.95) - 1], 2), "read_peak_rss_mb": _peak_mb()}


def measure(backend: str, points: int, scratch: Path) -> dict:
    folder = scratch / backend
    result: dict = {}
    for phase in ("write", "read"):
        proc = subprocess.run([sys.executable, __file__, "--phase", phase, "--backend", backend, "--dir", str(folder),
                               "--points", str(points)], capture_output=True, text=True)
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    result["write_peak_rss_mb"] = round(result["write_peak_rss_mb"], 1)  # upserts and the index build
    result["read_peak_rss_mb"] = round(result["read_peak_rss_mb"], 1)  # reopen and queries
    result["peak_rss_mb"] = max(result["write_peak_rss_mb"], result["read_peak_rss_mb"])
    if backend == "server":
        from docingest.core.store import QdrantStore

        QdrantStore(_location(backend, folder)).drop_collection("bench__v1")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--backends", default="edge,local" + (",server" if os.environ.get("DOCINGEST_QDRANT_URL") else ""))
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    parser.add_argument("--out", type=Path, help="Also write the JSON here.")
    parser.add_argument("--phase", choices=["write", "read"], help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase = write if args.phase == "write" else read
        print(json.dumps(phase(args.backend, args.dir, args.points)))
        return
    scratch = Path(tempfile.mkdtemp(prefix="docingest-store-bench-"))
    try:
        backends = {b: measure(b, args.points, scratch) for b in args.backends.split(",") if b}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"points": args.points, "backends": backends, "targets": _targets(backends)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
        return
    keys = ["upsert_points_per_s", "index_build_s", "reopen_s", "query_p50_ms", "query_p95_ms", "peak_rss_mb"]
    print(f"{args.points} points, {DIM}-d, batches of {BATCH}; {QUERIES} queries (limit 10, with payload; ms)")
    heads = ["upsert pts/s", "index s", "reopen s", "query p50", "query p95", "peak RSS MB"]
    print(f"{'backend':<8}" + "".join(f"{h:>12}" for h in heads))
    for name, row in backends.items():
        cells = ["-" if row.get(k) is None else str(row[k]) for k in keys]
        print(f"{name:<8}" + ("".join(f"{c:>12}" for c in cells) if "error" not in row else f"  error: {row['error']}"))
    for name, (op, limit, value, ok) in report["targets"].items():
        print(f"target {name} {op} {limit}: {value} {'met' if ok else 'MISSED'}")


def _targets(backends: dict) -> dict:
    edge, local = backends.get("edge", {}), backends.get("local", {})
    values = {"edge_reopen_s": edge.get("reopen_s"), "edge_query_p95_ms": edge.get("query_p95_ms"),
              "edge_upsert_over_local": round(edge["upsert_points_per_s"] / local["upsert_points_per_s"], 2)
              if edge.get("upsert_points_per_s") and local.get("upsert_points_per_s") else None}
    return {k: (op, limit, values[k], values[k] is not None and (values[k] >= limit if op == ">=" else
                                                               values[k] <= limit))
            for k, (op, limit) in TARGETS.items()}


if __name__ == "__main__":
    main()
