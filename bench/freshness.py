"""Saved -> searchable: how fast a warm ``docingest watch`` makes a change searchable, and what it costs.

    python bench/freshness.py [--docs 1000] [--saves 50] [--burst 200] [--idle-s 60] [--rss-saves 1000] [--json OUT]

A phase with 0 (``--saves 0``, ``--burst 0``, ``--idle-s 0``) is skipped: ``--saves 0 --burst 0 --idle-s 0`` measures
RSS growth over the saves alone, right after warm-up.

On a generated collection of ``--docs`` documents (bench/make_corpus.py) a watch runs with ``--json``; then:
  * ``--saves`` single-file saves of a small Markdown file, a DOCX and a 2-page born-digital PDF (the shared corpus's
    code_and_formula.pdf / picture_classification.pdf), one at a time: latency = the event's ``at`` (when the run
    that wrote the document's points returned) minus the time just before the file was written; p50 and p95;
  * a burst: ``--burst`` small Markdown files copied in at once, time until the last is searchable, against a cold
    ``docingest ingest`` of the same files (a fresh process and store, as a user would run it);
  * idle CPU of the watch (its process and children, Prefect's temporary API included) over ``--idle-s`` seconds;
  * RSS of the watch process after warm-up and after ``--rss-saves`` more Markdown saves.
Targets (issue #36, 2-core machine): Markdown p95 <= 1.0 s, p50 <= 0.5 s; burst <= 0.5 x cold ingest; idle CPU <= 1 %
of one core; RSS growth <= 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from make_corpus import generate, generate_small  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpus" / "docling-testdata"
EXE = Path(sys.executable).with_name("docingest")
DOCX = [SHARED / "docx" / "sources" / "word_sample.docx", SHARED / "docx" / "sources" / "lorem_ipsum.docx"]
PDF = [SHARED / "pdf" / "sources" / "code_and_formula.pdf", SHARED / "pdf" / "sources" / "picture_classification.pdf"]


class Watch:
    def __init__(self, folder: Path, work: Path, env: dict[str, str], debounce_ms: int) -> None:
        self.started = time.time()
        self.log = open(work / "watch-stderr.txt", "w")  # noqa: SIM115 - for the process's life
        self.proc = subprocess.Popen([str(EXE), "watch", str(folder), "-c", "fresh", "--qdrant-path",
                                      str(work / "store"), "--json", "--debounce-ms", str(debounce_ms)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.events: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def wait(self, want, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise SystemExit(f"the watch ended: {(Path(self.log.name)).read_text()[-3000:]}") from None
                continue
            if event["event"] in ("failed", "error"):
                print("  !", event, file=sys.stderr)
            if want(event):
                return event
        raise SystemExit(f"timed out waiting; stderr: {Path(self.log.name).read_text()[-3000:]}")

    def drain(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> float:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        return time.monotonic() - started


def save_latencies(watch: Watch, live: Path, kind: str, saves: int, phase: str = "") -> list[float]:
    """``saves`` saves of one kind, each awaited; the seconds from just before the write to searchable. Each
    Markdown save writes new text (``phase`` keeps a later phase's text from repeating an earlier one's)."""
    got = []
    for i in range(saves):
        slot = i % 5
        if kind == "md":
            name = f"note-{slot}.md"
            data = (f"# Live note {slot}\n\nRevision {phase}{i}: the team agreed on item {i * 7 % 97} and moved the review "
                    f"to week {i % 52}.\n").encode()
        else:
            name = f"{kind}-{slot}.{kind}"
            data = (DOCX if kind == "docx" else PDF)[(i // 5) % 2].read_bytes()
        watch.drain()
        saved = time.time()
        (live / name).write_bytes(data)
        event = watch.wait(lambda e, n=f"live/{name}": e.get("path") == n and e["event"] in ("indexed", "failed"))
        if event["event"] == "indexed":
            got.append(event["at"] - saved)
        time.sleep(0.2)
    return got


def burst(watch: Watch, work: Path, folder: Path, env: dict[str, str], files: int, report: dict) -> None:
    """Files copied in at once: until the last is searchable, against a cold ingest of the same files."""
    source = work / "burst-source"
    generate_small(source, files, seed=11)
    names = {f"burst/{p.relative_to(source).as_posix()}" for p in source.rglob("*.md")}
    watch.drain()
    started = time.time()
    shutil.copytree(source, folder / "burst")
    pending, last = set(names), started
    while pending:
        event = watch.wait(lambda e: e.get("path") in pending)
        pending.discard(event["path"])
        last = max(last, event["at"])
    warm = last - started
    cold_started = time.monotonic()
    cold = subprocess.run([str(EXE), "ingest", str(source), "-c", "cold", "--qdrant-path", str(work / "cold-store"),
                           "--json"], env={**env, "DOCINGEST_HOME": str(work / "cold-home")}, capture_output=True,
                          text=True)
    cold_s = time.monotonic() - cold_started
    assert cold.returncode == 0, cold.stderr[-2000:]
    report["burst"] = {"files": len(names), "watch_s": round(warm, 2), "cold_ingest_s": round(cold_s, 2),
                       "ratio": round(warm / cold_s, 3)}
    print(f"burst: {report['burst']}", flush=True)


def idle(watch: Watch, seconds: float, report: dict) -> None:
    """CPU of the watch and its children while nothing changes."""
    time.sleep(5)  # the burst's upkeep settles
    cpu0, t0 = watch.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    share = (watch.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    report["idle_cpu_pct_of_one_core"] = round(100 * share, 2)
    print(f"idle CPU: {report['idle_cpu_pct_of_one_core']} % of one core over {seconds:g} s", flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--saves", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--idle-s", type=float, default=60)
    parser.add_argument("--rss-saves", type=int, default=1000)
    parser.add_argument("--debounce-ms", type=int, default=200)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="docingest-freshness-"))
    shutil.rmtree(work, ignore_errors=True)
    folder, live = work / "corpus", work / "corpus" / "live"
    live.mkdir(parents=True)
    generate(folder / "base", args.docs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCINGEST_", "PREFECT_API"))}
    env.update(DOCINGEST_HOME=str(work / "home"), PREFECT_HOME=str(work / "prefect"), HF_HUB_OFFLINE="1")

    watch = Watch(folder, work, env, args.debounce_ms)
    try:
        measure(watch, args, work, folder, live, env)
    finally:
        if watch.proc.poll() is None:  # a phase that failed must not leave the watch (and its Prefect server) running
            watch.proc.terminate()
            watch.proc.wait(timeout=60)


def measure(watch: Watch, args: argparse.Namespace, work: Path, folder: Path, live: Path, env: dict[str, str]) -> None:
    ready = watch.wait(lambda e: e["event"] == "ready", timeout=1800)
    report: dict = {"docs": ready["documents"], "ready_s": round(ready["at"] - watch.started, 1),
                    "debounce_ms": args.debounce_ms}
    print(f"ready: {ready['documents']} documents in {report['ready_s']} s", flush=True)
    time.sleep(2)
    report["rss_warm_mb"] = round(watch.rss_mb(), 1)

    for kind in ("md", "docx", "pdf") if args.saves else ():
        got = save_latencies(watch, live, kind, args.saves)
        report[kind] = {"saves": len(got), "p50_s": round(pct(got, 0.5), 3), "p95_s": round(pct(got, 0.95), 3),
                        "mean_s": round(statistics.fmean(got), 3), "max_s": round(max(got), 3)}
        print(f"{kind}: {report[kind]}", flush=True)

    if args.burst:
        burst(watch, work, folder, env, args.burst, report)
    if args.idle_s:
        idle(watch, args.idle_s, report)

    rss_before = watch.rss_mb()
    save_latencies(watch, live, "md", args.rss_saves, phase="rss-")
    time.sleep(2)
    rss_after = watch.rss_mb()
    report["rss"] = {"after_warm_up_mb": report["rss_warm_mb"], "before_saves_mb": round(rss_before, 1),
                     "after_saves_mb": round(rss_after, 1), "saves": args.rss_saves,
                     "growth_pct": round(100 * (rss_after / report["rss_warm_mb"] - 1), 1),
                     "growth_over_the_saves_pct": round(100 * (rss_after / rss_before - 1), 1)}
    print(f"rss: {report['rss']}", flush=True)
    report["sigterm_exit_s"] = round(watch.stop(), 2)
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
