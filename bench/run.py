"""docingest vs a naive script vs the raw embedding limit, plus re-sync costs, in one run on one machine.

    python bench/run.py --corpus shared            # ../shared/corpus/docling-testdata
    python bench/run.py --corpus gen --docs 1000   # generated corpus (bench/make_corpus.py)
    python bench/run.py --corpus PATH [--skip-naive] [--only-docingest] [--out bench/results/NAME.json]

Each phase runs as its own process (so peak RSS is that phase's, read with wait4): (a) `docingest ingest` from
scratch, (b) bench/naive.py, (c) bench/raw_encode.py on the naive run's chunk texts, (d) a no-op re-sync and a
1%-changed re-sync with docingest. Prints a table and writes JSON. Timings are measurements, never test assertions.
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

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpus" / "docling-testdata"
TARGETS = {"docingest_wall_over_naive": ("<=", 0.6), "docingest_chunks_per_s_over_raw": (">=", 0.9),
           "noop_resync_over_full": ("<=", 0.05), "changed_1pct_resync_over_full": ("<=", 0.05)}


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
    parser.add_argument("--corpus", default="shared", help="shared, gen, or a folder")
    parser.add_argument("--docs", type=int, default=1000, help="documents of the generated corpus")
    parser.add_argument("--skip-naive", action="store_true", help="skip (b) and (c)")
    parser.add_argument("--only-docingest", action="store_true", help="only the full ingest (memory scaling)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("ingest_args", nargs="*", help="extra `docingest ingest` options, after --")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="docingest-bench-"))
    corpus = work / "corpus"
    if args.corpus == "shared":
        shutil.copytree(SHARED, corpus)
        label = "docling-testdata"
    elif args.corpus == "gen":
        sys.path.insert(0, str(REPO / "bench"))
        from make_corpus import generate

        generate(corpus, args.docs)
        label = f"generated-{args.docs}"
    else:
        shutil.copytree(Path(args.corpus), corpus)
        label = Path(args.corpus).name
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

    phases["docingest_full"] = run_phase("docingest_full", docingest, env, work)
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

    full = phases["docingest_full"]
    d = full["data"]
    chunks = d["chunks"]["embedded"]
    rows = {}
    for name, p in phases.items():
        data = p["data"]
        if name == "raw_encode":
            n_docs, n_chunks, n_pages = None, data["chunks"], None
        elif name == "naive":
            n_docs, n_chunks, n_pages = data["documents"], data["chunks"], data.get("pages")
        else:
            n_docs, n_chunks, n_pages = data["documents"]["seen"], data["chunks"]["embedded"], data.get("pages")
        wall = data["wall_s"] if name == "raw_encode" else p["wall_s"]
        rows[name] = {"wall_s": round(wall, 2), "documents": n_docs, "chunks": n_chunks,
                      "docs_per_s": round(n_docs / wall, 2) if n_docs else None,
                      "chunks_per_s": round(n_chunks / wall, 2) if n_chunks else None, "pages": n_pages,
                      "pages_per_s": round(n_pages / wall, 2) if n_pages else None,
                      "peak_rss_mb": round(p["peak_rss_mb"]), "stage_s": data.get("stage_seconds") or data.get("stages")}
    ratios = {}
    if "naive" in phases:
        ratios["docingest_wall_over_naive"] = rows["docingest_full"]["wall_s"] / rows["naive"]["wall_s"]
        ratios["docingest_chunks_per_s_over_raw"] = (rows["docingest_full"]["chunks_per_s"] or 0) / rows[
            "raw_encode"]["chunks_per_s"]
    if "noop_resync" in phases:
        ratios["noop_resync_over_full"] = rows["noop_resync"]["wall_s"] / rows["docingest_full"]["wall_s"]
        ratios["changed_1pct_resync_over_full"] = rows["changed_1pct_resync"]["wall_s"] / rows["docingest_full"][
            "wall_s"]
    verdicts = {k: (v <= TARGETS[k][1] if TARGETS[k][0] == "<=" else v >= TARGETS[k][1]) for k, v in ratios.items()}
    report = {
        "corpus": label, "files": files, "chunks": chunks, "failed_documents": d["documents"]["failed"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M"), "phases": rows,
        "ratios": {k: round(v, 3) for k, v in ratios.items()}, "targets": TARGETS, "met": verdicts,
        "ingest_args": args.ingest_args,
    }
    print_table(report)
    out = args.out or REPO / "bench" / "results" / f"{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['corpus']}: {report['files']} files, {report['chunks']} chunks, "
                        f"{report['machine']['cpus']} CPUs")
    for column in ("phase", "wall s", "docs/s", "chunks/s", "pages/s", "peak RSS MB"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    for name, r in report["phases"].items():
        table.add_row(name, f"{r['wall_s']:.1f}", str(r["docs_per_s"] or "-"), str(r["chunks_per_s"] or "-"),
                      str(r.get("pages_per_s") or "-"), str(r["peak_rss_mb"]))
    console = Console(stderr=True)
    console.print(table)
    for k, v in report["ratios"].items():
        op, target = report["targets"][k]
        console.print(f"{k} = {v:.3f} (target {op} {target}): {'met' if report['met'][k] else 'MISSED'}")


if __name__ == "__main__":
    main()
