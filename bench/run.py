"""docingest vs a naive script vs the raw embedding limit, plus re-sync costs, in one run on one machine.

    python bench/run.py --corpus shared            # ../shared/corpus/docling-testdata
    python bench/run.py --corpus gen --docs 1000   # generated handbook pages (bench/make_corpus.py)
    python bench/run.py --corpus small --docs 1400 # generated short abstracts (make_corpus.generate_small)
    python bench/run.py --corpus PATH [--skip-naive] [--only-docingest] [--peers] [--out bench/results/NAME.json]

First, once, Prefect's temporary-API database is created in the work folder's PREFECT_HOME (`python -m
docingest.ephemeral`, what the Docker image does at build time; ~20 s on 2 CPUs, reported apart as `setup`), so the
docingest phases measure runs on an installed machine rather than Prefect's one-time migrations; `--cold-prefect`
skips it and the full ingest pays it. Each phase runs as its own process, one after another (so peak RSS is that
phase's, read with wait4): (a) `docingest ingest` from scratch, (b) bench/naive.py, (c) bench/raw_encode.py on the
naive run's chunk texts, (d) a no-op re-sync and a 1%-changed re-sync with docingest. With --peers, (e) the LlamaIndex
peer (bench/peers/llamaindex_ingest.py, in its own virtual environment from bench/peers/venv.py, created on first use)
on its own copy of the same corpus: a full ingest, a no-op re-run and a re-run after the same 1% edit. Prints a table
and writes JSON. Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from peers.venv import ensure_peer_python, installed_versions  # bench/peers/: bench/ is on sys.path when run as a script

if TYPE_CHECKING:
    from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpus" / "docling-testdata"
TARGETS = {"docingest_wall_over_naive": ("<=", 0.6), "docingest_chunks_per_s_over_raw": (">=", 0.8),
           "noop_resync_over_full": ("<=", 0.05), "changed_1pct_resync_over_full": ("<=", 0.05)}
PEER_TARGETS = {"docingest_wall_over_llamaindex": ("<=", 0.8), "noop_resync_over_llamaindex_noop": ("<=", 0.5)}
PEER_PHASES = ("llamaindex_full", "llamaindex_noop", "llamaindex_changed_1pct")
# The peer's libraries, recorded in the report: its own pins and the versions it shares with docingest.
PEER_PACKAGES = ["llama-index-core", "llama-index-readers-docling", "llama-index-node-parser-docling",
                 "llama-index-embeddings-huggingface", "llama-index-vector-stores-qdrant", "docling-slim", "docling-core",
                 "sentence-transformers", "transformers", "torch", "qdrant-client"]


def prepare_prefect(env: dict[str, str]) -> float:
    """Create and migrate the temporary API's database under env's PREFECT_HOME, once; returns the seconds it took."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "docingest.ephemeral"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 1)


def run_phase(name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> dict:
    """Run one phase; wall time, exit code, peak RSS (MB, the process and the children it waited for), stdout."""
    out, err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    started = time.perf_counter()
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    text = out.read_text()
    if code not in (0, 1):
        raise SystemExit(f"phase {name} failed (exit {code}): {err.read_text()[-2000:]}")
    last = [line for line in text.splitlines() if line.startswith("{")]
    return {"wall_s": wall, "exit": code, "peak_rss_mb": usage.ru_maxrss / 1024, "data": json.loads(last[-1])}


def touch_fraction(corpus: Path, fraction: float) -> list[str]:
    """Append a sentence to ``fraction`` of the text documents (at least one): a realistic small edit."""
    texts = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix in (".md", ".html", ".csv", ".adoc"))
    n = max(1, math.ceil(len(list(p for p in corpus.rglob("*") if p.is_file())) * fraction))
    changed = texts[:: max(1, len(texts) // n)][:n]
    for path in changed:
        with path.open("a") as fh:
            fh.write("\n\nRevised: this page was updated after the quarterly review.\n"
                     if path.suffix != ".html" else "<p>Revised after the quarterly review.</p>\n")
    return [str(p.relative_to(corpus)) for p in changed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="shared", help="shared, gen, small, or a folder")
    parser.add_argument("--docs", type=int, default=1000, help="documents of a generated corpus (gen, small)")
    parser.add_argument("--skip-naive", action="store_true", help="skip (b) and (c)")
    parser.add_argument("--only-docingest", action="store_true", help="only the full ingest (memory scaling)")
    parser.add_argument("--peers", action="store_true", help="add (e): the LlamaIndex peer, in its own environment")
    parser.add_argument("--cold-prefect", action="store_true",
                        help="no Prefect database made beforehand: the full ingest pays its creation")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("ingest_args", nargs="*", help="extra `docingest ingest` options, after --")
    args = parser.parse_args()
    peers = args.peers and not args.only_docingest
    peer_python = ensure_peer_python() if peers else None  # before any phase: creating it is not part of a timing

    work = Path(tempfile.mkdtemp(prefix="docingest-bench-"))
    corpus = work / "corpus"
    label = prepare_corpus(args.corpus, args.docs, corpus)
    if peers:
        shutil.copytree(corpus, work / "corpus-llamaindex")  # the same starting corpus, untouched by docingest's runs
    files = sum(1 for p in corpus.rglob("*") if p.is_file())
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DOCINGEST_HOME=str(work / "home"), PREFECT_HOME=str(work / "prefect"),
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(work / "results"), TOKENIZERS_PARALLELISM="false")
    for var in ("DOCINGEST_QDRANT_URL", "PREFECT_API_URL", "DOCINGEST_PUSHGATEWAY_URL"):
        env.pop(var, None)
    docingest = [str(Path(sys.executable).parent / "docingest"), "ingest", str(corpus), "-c", "bench", "--json",
                 *args.ingest_args]
    phases: dict[str, dict] = {}
    print(f"corpus {label}: {files} files; work folder {work}", file=sys.stderr)

    setup = {} if args.cold_prefect else {"prefect_database_s": prepare_prefect(env)}
    phases["docingest_full"] = run_phase("docingest_full", docingest, env, work)
    changed: list[str] = []
    if not args.only_docingest:
        if not args.skip_naive:
            phases["naive"] = run_phase("naive", [sys.executable, "bench/naive.py", str(corpus), str(work / "naive-q"),
                                                  "--texts-out", str(work / "texts.json")], env, work)
            phases["raw_encode"] = run_phase("raw_encode", [sys.executable, "bench/raw_encode.py",
                                                            str(work / "texts.json")], env, work)
        phases["noop_resync"] = run_phase("noop_resync", docingest, env, work)
        changed = touch_fraction(corpus, 0.01)
        phases["changed_1pct_resync"] = run_phase("changed_1pct_resync", docingest, env, work)
        phases["changed_1pct_resync"]["changed_files"] = len(changed)
    if peers:
        phases |= run_llamaindex(peer_python, work, changed, env)

    rows = {name: summarize(name, p) for name, p in phases.items()}
    ratios = compute_ratios(rows)
    targets = TARGETS | PEER_TARGETS if peers else TARGETS
    verdicts = {k: (v <= targets[k][1] if targets[k][0] == "<=" else v >= targets[k][1]) for k, v in ratios.items()}
    d = phases["docingest_full"]["data"]
    report = {
        "corpus": label, "files": files, "chunks": d["chunks"]["embedded"], "failed_documents": d["documents"]["failed"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M"), "setup": setup, "phases": rows,
        "ratios": {k: round(v, 3) for k, v in ratios.items()}, "targets": targets, "met": verdicts,
        "ingest_args": args.ingest_args,
    }
    if peers:
        report["peers"] = {"llamaindex": {"python": str(peer_python),
                                          "versions": installed_versions(peer_python, PEER_PACKAGES)}}
    print_table(report)
    out = args.out or REPO / "bench" / "results" / f"{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def prepare_corpus(kind: str, docs: int, corpus: Path) -> str:
    """Lay the corpus out in ``corpus`` (a copy, or a generated one); its label for the report."""
    if kind == "shared":
        shutil.copytree(SHARED, corpus)
        return "docling-testdata"
    if kind in ("gen", "small"):
        import make_corpus  # bench/, like peers above

        if kind == "gen":
            make_corpus.generate(corpus, docs)
            return f"generated-{docs}"
        make_corpus.generate_small(corpus, docs)
        return f"small-{docs}"
    shutil.copytree(Path(kind), corpus)
    return Path(kind).name


def run_llamaindex(python: Path, work: Path, changed: list[str], env: dict[str, str]) -> dict[str, dict]:
    """(e) The LlamaIndex peer on its own copy of the corpus: full ingest, no-op re-run, and a re-run after the same
    edit docingest's 1%-changed pass saw (``changed``: the files touch_fraction edited in docingest's copy)."""
    from docingest.core.embed import resolve_model_location

    model_dir, _ = resolve_model_location("sentence-transformers/all-MiniLM-L6-v2")  # the folder docingest loads
    corpus = work / "corpus-llamaindex"
    cmd = [str(python), "bench/peers/llamaindex_ingest.py", str(corpus), str(work / "llamaindex-state"),
           "--model", model_dir]
    phases = {"llamaindex_full": run_phase("llamaindex_full", cmd, env, work),
              "llamaindex_noop": run_phase("llamaindex_noop", cmd, env, work)}
    edited = touch_fraction(corpus, 0.01)
    if edited != changed:
        raise SystemExit(f"the peer's copy got a different edit: {edited[:3]} vs {changed[:3]}")
    phases["llamaindex_changed_1pct"] = run_phase("llamaindex_changed_1pct", cmd, env, work)
    phases["llamaindex_changed_1pct"]["changed_files"] = len(edited)
    return phases


def summarize(name: str, phase: dict) -> dict:
    """One row of the report: wall time, counts and rates, peak RSS, the phase's own stage seconds."""
    data = phase["data"]
    if name == "raw_encode":
        n_docs, n_chunks, n_pages = None, data["chunks"], None
    elif name == "naive" or name in PEER_PHASES:
        n_docs, n_chunks, n_pages = data["documents"], data["chunks"], data.get("pages")
    else:
        n_docs, n_chunks, n_pages = data["documents"]["seen"], data["chunks"]["embedded"], data.get("pages")
    wall = data["wall_s"] if name == "raw_encode" else phase["wall_s"]
    row = {"wall_s": round(wall, 2), "documents": n_docs, "chunks": n_chunks,
           "docs_per_s": round(n_docs / wall, 2) if n_docs else None,
           "chunks_per_s": round(n_chunks / wall, 2) if n_chunks else None, "pages": n_pages,
           "pages_per_s": round(n_pages / wall, 2) if n_pages else None,
           "peak_rss_mb": round(phase["peak_rss_mb"]), "stage_s": data.get("stage_seconds") or data.get("stages")}
    if name in PEER_PHASES:  # what the peer re-processed, and the points its collection holds afterwards
        row |= {"documents_changed": data["changed"], "failed": data["failed"], "points": data["points"]}
    return row


def compute_ratios(rows: dict[str, dict]) -> dict[str, float]:
    """The target ratios that the phases run allow."""
    ratios = {}
    if "naive" in rows:
        ratios["docingest_wall_over_naive"] = rows["docingest_full"]["wall_s"] / rows["naive"]["wall_s"]
        ratios["docingest_chunks_per_s_over_raw"] = (rows["docingest_full"]["chunks_per_s"] or 0) / rows[
            "raw_encode"]["chunks_per_s"]
    if "noop_resync" in rows:
        ratios["noop_resync_over_full"] = rows["noop_resync"]["wall_s"] / rows["docingest_full"]["wall_s"]
        ratios["changed_1pct_resync_over_full"] = rows["changed_1pct_resync"]["wall_s"] / rows["docingest_full"][
            "wall_s"]
    if "llamaindex_full" in rows:
        ratios["docingest_wall_over_llamaindex"] = rows["docingest_full"]["wall_s"] / rows["llamaindex_full"]["wall_s"]
        ratios["noop_resync_over_llamaindex_noop"] = rows["noop_resync"]["wall_s"] / rows["llamaindex_noop"]["wall_s"]
    return ratios


def print_table(report: dict) -> None:
    """Every phase in one table, then docingest and the peer pass by pass (with --peers), then the target ratios."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['corpus']}: {report['files']} files, {report['chunks']} chunks, "
                        f"{report['machine']['cpus']} CPUs")
    table.add_column("phase", no_wrap=True)
    for column in ("wall s", "docs/s", "chunks", "chunks/s", "pages/s", "peak RSS MB"):
        table.add_column(column, justify="right")
    for name, r in report["phases"].items():
        table.add_row(name, f"{r['wall_s']:.1f}", str(r["docs_per_s"] or "-"), str(r["chunks"] or "-"),
                      str(r["chunks_per_s"] or "-"), str(r.get("pages_per_s") or "-"), str(r["peak_rss_mb"]))
    console = Console(stderr=True)
    if not console.is_terminal:  # a log file has no width to fit: rich's 80 columns would cut the headers
        console.width = 120
    console.print(table)
    if report.get("setup"):
        console.print(f"once before the phases: Prefect's database created in {report['setup']['prefect_database_s']} s "
                      "(--cold-prefect: the full ingest pays it)")
    if "llamaindex_full" in report["phases"]:
        console.print(peer_table(report["phases"]))
    for k, v in report["ratios"].items():
        op, target = report["targets"][k]
        console.print(f"{k} = {v:.3f} (target {op} {target}): {'met' if report['met'][k] else 'MISSED'}")


def peer_table(phases: dict) -> Table:
    """docingest and LlamaIndex side by side for each pass: wall seconds, chunks embedded, and their ratio."""
    from rich.table import Table

    table = Table(title="docingest vs LlamaIndex IngestionPipeline", caption="ratio, chunks: docingest / LlamaIndex")
    table.add_column("pass", no_wrap=True)
    for column in ("docingest s", "LlamaIndex s", "ratio", "chunks"):
        table.add_column(column, justify="right", no_wrap=True)
    for label, ours, peer in (("full ingest", "docingest_full", "llamaindex_full"),
                              ("no-op re-sync", "noop_resync", "llamaindex_noop"),
                              ("1% changed", "changed_1pct_resync", "llamaindex_changed_1pct")):
        a, b = phases[ours], phases[peer]
        table.add_row(label, f"{a['wall_s']:.1f}", f"{b['wall_s']:.1f}", f"{a['wall_s'] / b['wall_s']:.2f}",
                      f"{a['chunks'] or 0} / {b['chunks'] or 0}")
    return table


if __name__ == "__main__":
    main()
