"""Scale-out on a real Dask cluster: a full ingest with 1, 2, ... workers against the default runner, on one machine.

    python bench/scale.py 1 2                      # the generated 1k corpus (bench/make_corpus.py), 1 then 2 workers
    python bench/scale.py 1 2 1 2 --no-baseline    # each count twice, alternating (a shared machine's noise)
    python bench/scale.py 2 --docs 300 --no-baseline --out bench/results/scale-300.json

The arguments are the worker counts to measure. For each count a fresh cluster is started on loopback (`dask
scheduler`, then that many `dask worker --nthreads 1` under their nannies, torch one thread each: Dask's nannies set
OMP_NUM_THREADS=1, and so does this script) and one `docingest ingest --task-runner dask --dask-address ...` runs from
scratch; the model loads in that run (each worker's plugin), as the default runner's does in its own. Measured:

- wall seconds and chunks/s (chunks embedded / wall, start-up included);
- CPU seconds of the flow's process and its children (the CLI, Prefect's temporary API, from wait4) and of the cluster
  (scheduler, nannies, workers, parse workers and fork servers: utime + stime + reaped children's, the difference
  across the run), and the flow's share of all of them;
- bytes moved between the flow and the cluster (the flow process's TCP sockets to the scheduler and the workers, read
  with `ss -ti` every 0.5 s: bytes acked out plus bytes received, the largest value seen per socket), per chunk;
- CPU seconds the rest of the machine used meanwhile (/proc/stat's busy time less the above): on a shared machine,
  the noise in the figures;
- peak RSS (VmHWM) of each worker process and of its parse workers, read just before the cluster is stopped, and of the
  flow process (wait4's ru_maxrss: the largest process of its tree).

The baseline (skip with --no-baseline) is the same ingest with the default threads runner, its peak RSS from wait4.
Prints a table and writes JSON (bench/results/scale-<docs>.json). Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = {"two_over_one_worker": (">=", 1.6), "flow_cpu_share": ("<=", 0.15), "worker_rss_over_default": ("<=", 1.3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workers", type=int, nargs="+", help="worker counts to measure, e.g. 1 2")
    parser.add_argument("--docs", type=int, default=1000, help="generated documents (bench/make_corpus.py)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the default (threads) runner's run")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default bench/results/scale-<docs>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # after --: more `docingest ingest` options
    args = parser.parse_args(argv[:len(argv) - len(extra) - (1 if "--" in argv else 0)])
    args.ingest_args = extra

    sys.path.insert(0, str(REPO / "bench"))
    import make_corpus

    work = Path(tempfile.mkdtemp(prefix="docingest-scale-"))
    corpus = work / "corpus"
    make_corpus.generate(corpus, args.docs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCINGEST_", "PREFECT_API"))}
    env.update(PREFECT_HOME=str(work / "prefect-home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DASK_DISTRIBUTED__WORKER__DAEMON="False")
    subprocess.run([sys.executable, "-m", "docingest.ephemeral"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # Prefect's database made once, as on an installed machine
    report: dict = {"docs": args.docs, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "date": time.strftime("%Y-%m-%d %H:%M"), "runs": {}}
    try:
        if not args.no_baseline:
            run_env = {**env, "DOCINGEST_HOME": str(work / "home-threads")}
            report["runs"]["threads"] = ingest(corpus, run_env, work / "threads", args.ingest_args)
            print_run("threads", report["runs"]["threads"])
        for k, n in enumerate(args.workers):
            name = f"dask-{n}" if f"dask-{n}" not in report["runs"] else f"dask-{n} (#{k + 1})"  # `1 2 1 2`: twice
            run_env = {**env, "DOCINGEST_HOME": str(work / f"home-{k}")}
            with Cluster(work / f"cluster-{k}", n, run_env) as cluster:
                result = ingest(corpus, run_env, work / f"dask-{k}", ["--task-runner", "dask", "--dask-address",
                                                                        cluster.address, *args.ingest_args], cluster)
            report["runs"][name] = result
            print_run(name, result)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["ratios"] = ratios(report["runs"], args.workers)
    out = args.out or REPO / "bench" / "results" / f"scale-{args.docs}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["ratios"], indent=1))
    print(f"written to {out}")


class Cluster:
    """A scheduler and ``n`` workers on loopback, each in a process group of its own; killed on exit."""

    def __init__(self, folder: Path, n: int, env: dict[str, str]) -> None:
        self.folder, self.n = folder, n
        self.env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Cluster:
        try:
            return self._up()
        except BaseException:
            self.__exit__()  # what started is stopped, also when the start failed half-way
            raise

    def _up(self) -> Cluster:
        self.folder.mkdir(parents=True)
        info = self.folder / "scheduler.json"
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(info))
        while not info.exists() or not info.read_text().strip():
            time.sleep(0.1)
        time.sleep(0.2)
        self.address = json.loads(info.read_text())["address"]
        for i in range(self.n):
            self._start(f"worker-{i + 1}", "worker", self.address, "--nthreads", "1", "--no-dashboard", "--host",
                        "127.0.0.1", "--name", f"worker-{i + 1}")
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(self.n, timeout=120)
            workers = client.run(os.getpid)  # address -> pid of each worker process
        self.worker_ports = {int(addr.rsplit(":", 1)[1]) for addr in workers}
        self.worker_pids = list(workers.values())
        self.scheduler_port = int(self.address.rsplit(":", 1)[1])
        self.cpu_before = self.cpu()
        return self

    def _start(self, name: str, *args: str) -> None:
        with (self.folder / f"{name}.log").open("w") as log:
            self.procs.append(subprocess.Popen([str(BIN / "dask"), *args], env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def cpu(self) -> float:
        """CPU seconds of the cluster's processes and the children they reaped."""
        stats = processes()
        groups = {p.pid for p in self.procs}
        return sum(s["cpu"] for s in stats.values() if s["pgrp"] in groups)

    def peaks(self) -> list[dict]:
        """Per worker: its process's VmHWM and its parse workers' (largest), MB."""
        out = []
        stats = processes()
        for pid in self.worker_pids:
            children = descendants(pid, stats)
            out.append({"worker_mb": vm_hwm(pid), "parse_workers_mb": max((vm_hwm(c) for c in children), default=0.0),
                        "processes": 1 + len(children)})
        return out

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait(30)


def processes() -> dict[int, dict]:
    """pid -> parent, process group, CPU seconds (own + reaped children's) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        out[int(entry)] = {"ppid": int(f[1]), "pgrp": int(f[2]), "cpu": sum(int(x) for x in f[11:15]) / tick}
    return out


def descendants(pid: int, stats: dict[int, dict]) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, s in stats.items() if s["ppid"] == parent]
        found += kids
        frontier += kids
    return found


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (all but idle and iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def vm_hwm(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


class SocketBytes:
    """Bytes on the flow process's TCP sockets to the cluster, from `ss -ti` every 0.5 s (largest seen per socket)."""

    def __init__(self, pid: int, ports: set[int]) -> None:
        self.pid, self.ports = pid, ports
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        try:
            out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return
        lines = out.splitlines()
        for head, detail in zip(lines[::2], lines[1::2], strict=False):
            if f"pid={self.pid}," not in head:
                continue
            parts = head.split()
            local, peer = parts[3], parts[4]
            if int(peer.rsplit(":", 1)[1]) not in self.ports:
                continue
            sent = re.search(r"bytes_acked:(\d+)", detail)
            received = re.search(r"bytes_received:(\d+)", detail)
            value = (int(sent.group(1)) if sent else 0, int(received.group(1)) if received else 0)
            old = self.seen.get((local, peer), (0, 0))
            self.seen[(local, peer)] = (max(old[0], value[0]), max(old[1], value[1]))

    def close(self) -> tuple[int, int]:
        self.stop.set()
        self.thread.join()
        return sum(v[0] for v in self.seen.values()), sum(v[1] for v in self.seen.values())


def ingest(corpus: Path, env: dict[str, str], logs: Path, extra: list[str], cluster: Cluster | None = None) -> dict:
    """One `docingest ingest` from scratch; its wall, chunks/s, CPU, bytes and memory."""
    logs.mkdir(parents=True)
    cmd = [str(BIN / "docingest"), "ingest", str(corpus), "-c", "scale", "--json", *extra]
    machine_before = machine_cpu()
    started = time.perf_counter()
    with (logs / "out").open("w") as out, (logs / "err").open("w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        sockets = SocketBytes(proc.pid, cluster.worker_ports | {cluster.scheduler_port}) if cluster else None
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: the run does not outlive the bench
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - started
    machine = machine_cpu() - machine_before
    sent, received = sockets.close() if sockets else (0, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"ingest failed (exit {code}): {(logs / 'err').read_text()[-3000:]}")
    result = json.loads((logs / "out").read_text().splitlines()[-1])
    chunks = result["chunks"]["embedded"]
    flow_cpu = usage.ru_utime + usage.ru_stime
    row = {"wall_s": round(wall, 1), "chunks": chunks, "chunks_per_s": round(chunks / wall, 2),
           "documents": result["documents"], "flow_cpu_s": round(flow_cpu, 1),
           "flow_peak_rss_mb": round(usage.ru_maxrss / 1024), "stage_seconds": result["stage_seconds"]}
    cluster_cpu = cluster.cpu() - cluster.cpu_before if cluster is not None else 0.0
    # What the rest of the machine used meanwhile (another user's work on a shared machine): noise to report.
    row["other_cpu_s"] = round(max(0.0, machine - flow_cpu - cluster_cpu), 1)
    if cluster is not None:
        row.update(cluster_cpu_s=round(cluster_cpu, 1), flow_cpu_share=round(flow_cpu / (flow_cpu + cluster_cpu), 3),
                   bytes_to_cluster=sent, bytes_from_cluster=received,
                   bytes_per_chunk=round((sent + received) / max(1, chunks)), workers=cluster.peaks())
    return row


def print_run(name: str, row: dict) -> None:
    line = f"{name:10} wall {row['wall_s']:7.1f} s  {row['chunks_per_s']:6.1f} chunks/s  flow CPU {row['flow_cpu_s']:.1f} s"
    if "cluster_cpu_s" in row:
        peaks = ", ".join(f"{w['worker_mb']:.0f}+{w['parse_workers_mb']:.0f}" for w in row["workers"])
        line += (f"  cluster CPU {row['cluster_cpu_s']:.1f} s  flow share {row['flow_cpu_share']:.1%}  "
                 f"{row['bytes_per_chunk']} B/chunk  worker peak MB (worker+parse) {peaks}")
    line += f"  flow peak {row['flow_peak_rss_mb']} MB  others' CPU {row['other_cpu_s']} s"
    print(line, flush=True)


def ratios(runs: dict[str, dict], counts: list[int]) -> dict:
    """The targets' ratios; a worker count measured more than once counts with its mean chunks/s."""
    def of(n: int) -> list[dict]:
        return [row for name, row in runs.items() if name == f"dask-{n}" or name.startswith(f"dask-{n} ")]

    def mean_rate(n: int) -> float:
        return sum(row["chunks_per_s"] for row in of(n)) / len(of(n))

    out: dict = {}
    if of(1) and of(2):
        out["two_over_one_worker"] = round(mean_rate(2) / mean_rate(1), 2)
    shares = [row["flow_cpu_share"] for n in set(counts) for row in of(n)]
    if shares:
        out["flow_cpu_share"] = max(shares)
    if "threads" in runs and shares:
        peak = max(max(w["worker_mb"], w["parse_workers_mb"]) for n in set(counts) for row in of(n)
                   for w in row["workers"])
        out["worker_rss_over_default"] = round(peak / runs["threads"]["flow_peak_rss_mb"], 2)
    out["met"] = {name: (out[name] >= bound if op == ">=" else out[name] <= bound)
                  for name, (op, bound) in TARGETS.items() if name in out}
    return out


if __name__ == "__main__":
    main()
