"""The deployment case: what a no-op re-sync costs against a running Prefect server, from the CLI and from a worker.

    python bench/deployment_noop.py CORPUS_DIR [--work DIR] [--out FILE.json] [--keep]

In a work folder of its own (PREFECT_HOME, DOCINGEST_HOME with the embedded store, the result storage) it starts a
real `prefect server start` on a loopback port, then runs, one after another:

- full_server: `docingest ingest CORPUS -c bench --json` with PREFECT_API_URL pointing at that server;
- noop_server: the same command again, nothing changed (3 times);
- noop_worker: the `local` deployment of prefect.yaml on the `local-pool` process pool (deployments/setup_pools.py),
  a `prefect worker start --pool local-pool --limit 1` polling every second (PREFECT_WORKER_QUERY_SECONDS=1), and
  `prefect deployment run ingest-documents/local --param source=CORPUS --param collection=bench --watch`: one
  warm-up run (the worker's first), then 3 measured no-op runs.

For every run: the client's wall time (process start to exit, peak RSS with wait4; for a worker run that includes the
`prefect` CLI's own start and --watch's wait for straggler logs after the terminal event) and, from the Prefect API:
the worker's pick-up (Scheduled to Pending), the flow-run process's start (Pending to Running: interpreter, imports,
pull step, loading the flow), the flow run (start to end), the flow body (the persisted IngestResult's duration_s),
submission to Completed (creation to the Completed state), Completed to the client's exit, and the run's timeline
(states and logs). Prints a table and one JSON line (also written to --out). Timings are measurements; the targets
(no-op <= 0.02 x the full ingest) are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEPLOYMENT = "ingest-documents/local"
POOL = "local-pool"
REPEATS = 3
TARGET = 0.02
QUERY_SECONDS = 1  # how often the worker polls for scheduled runs (PREFECT_WORKER_QUERY_SECONDS)


def make_env(work: Path) -> dict[str, str]:
    """The environment of every process of the bench: its own Prefect and docingest homes, offline model."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_HOME=str(work / "prefect"), DOCINGEST_HOME=str(work / "home"),
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(work / "results"),
               PREFECT_WORKER_QUERY_SECONDS=str(QUERY_SECONDS), PWD=str(REPO))  # PWD: prefect.yaml's pull step reads {{ $PWD }}
    for var in ("DOCINGEST_QDRANT_URL", "PREFECT_API_URL", "DOCINGEST_PUSHGATEWAY_URL"):
        env.pop(var, None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(name: str, cmd: list[str], env: dict[str, str], work: Path) -> subprocess.Popen:
    """A long-running process (server, worker) in its own session, so stopping it stops its children too."""
    log = (work / f"{name}.log").open("w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, sig: signal.Signals, grace: float = 30) -> None:
    """Send ``sig`` to the process group, wait, and kill the group if it is still there."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(check: Callable[[], bool], what: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll ``check()`` until true; fail with the end of ``log`` if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up (exit {proc.poll()}): {log.read_text()[-2000:]}")
        time.sleep(0.2)


def healthy(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


def timed(name: str, cmd: list[str], env: dict[str, str], work: Path) -> dict:
    """Run one client command to its end: wall time, exit code, peak RSS (MB), start and end (epoch), its output."""
    out = work / f"{name}.out"
    begun, started = time.time(), time.perf_counter()
    with out.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    text = out.read_text()
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}): {text[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": round(usage.ru_maxrss / 1024), "began": begun, "ended": begun + wall,
            "output": text}


def cli_run(name: str, corpus: Path, env: dict[str, str], work: Path) -> dict:
    """`docingest ingest CORPUS -c bench --json` against the server; its flow run read back from the API."""
    run = timed(name, [str(BIN / "docingest"), "ingest", str(corpus), "-c", "bench", "--json"], env, work)
    data = json.loads([line for line in run.pop("output").splitlines() if line.startswith("{")][-1])
    return run | {"documents": data["documents"], "chunks": data["chunks"]["embedded"],
                  "flow": flow_run_figures(data["flow_run_id"], run)}


def worker_run(name: str, corpus: Path, env: dict[str, str], work: Path) -> dict:
    """`prefect deployment run ... --watch` (the worker runs the flow in a process of its own); then, once that
    process has let go of the store, the flow run read back from the API."""
    run = timed(name, [str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--param", f"source={corpus}",
                       "--param", "collection=bench", "--watch"], env, work)
    match = re.search(r"UUID: ([0-9a-f-]{36})", run.pop("output"))
    if not match:
        raise SystemExit(f"{name}: no flow run id in the output of `prefect deployment run`")
    wait_store_free(work)
    return run | {"flow": flow_run_figures(match.group(1), run)}


def wait_store_free(work: Path, timeout: float = 120) -> None:
    """Block until no process holds the embedded store (docingest.lock, held by the process that opened it)."""
    from filelock import FileLock

    lock = work / "home" / "qdrant" / "docingest.lock"
    if lock.exists():
        with FileLock(lock, timeout=timeout, thread_local=False):
            pass


def flow_run_figures(flow_run_id: str, client: dict) -> dict:
    """A flow run from the API, in seconds: Scheduled to Pending (the worker's pick-up), Pending to Running (the
    flow-run process's start: interpreter, imports, pull step, loading the flow), its run time, the flow body's own
    duration (its result), creation to Completed, Completed to the client's exit; and its timeline (states and logs,
    seconds after the client started)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as api:
        run = api.read_flow_run(flow_run_id)
        states = sorted(api.read_flow_run_states(run.id), key=lambda s: s.timestamp)
        logs = api.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    result = run.state.result(raise_on_failure=False)
    at: dict[str, float] = {}  # the first state of each type (Submitting is a second Pending)
    for state in states:
        at.setdefault(state.type.value, state.timestamp.timestamp())
    created = run.created.timestamp()
    timeline = [(s.timestamp.timestamp(), f"state {s.name}") for s in states] + [(client["ended"], "client exited")]
    timeline += [(log.timestamp.timestamp(), f"log {log.name}: {log.message.splitlines()[0][:100]}") for log in logs]
    return {
        "id": flow_run_id, "state": run.state.name,
        "pickup_s": round(at["PENDING"] - at["SCHEDULED"], 2) if "SCHEDULED" in at else None,  # none in a CLI run
        "process_start_s": round(at["RUNNING"] - at["PENDING"], 2),
        "run_s": round(run.end_time.timestamp() - run.start_time.timestamp(), 2),
        "total_run_time_s": round(run.total_run_time.total_seconds(), 2),
        "body_s": round(result.duration_s, 2) if hasattr(result, "duration_s") else None,
        "submit_to_completed_s": round(at["COMPLETED"] - created, 2),
        "completed_to_client_exit_s": round(client["ended"] - at["COMPLETED"], 2),
        "timeline": [f"{t - client['began']:7.2f}  {what}" for t, what in sorted(timeline)],
    }


def deploy(env: dict[str, str], work: Path) -> None:
    """The pool and its queues, and the `local` deployment of prefect.yaml, as tests/integration/test_deployments.py."""
    timed("setup_pools", [sys.executable, "deployments/setup_pools.py", POOL], env, work)
    timed("deploy", [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "local"], env, work)


COLUMNS = {"wall_s": "wall s", "pickup_s": "pick-up s", "process_start_s": "process start s", "run_s": "flow-run s",
           "body_s": "flow body s", "submit_to_completed_s": "submit→completed s",
           "completed_to_client_exit_s": "completed→client exit s"}


def summary(runs: list[dict]) -> dict:
    """Medians over repeated runs of one phase, of each figure in the table."""
    medians = {}
    for key in COLUMNS:
        values = [(run | run["flow"])[key] for run in runs]
        medians[key] = None if None in values else round(statistics.median(values), 2)
    return medians


def print_table(report: dict) -> None:
    """Every run, the medians, the ratios; then the timeline of the last run of each kind."""
    from rich.console import Console
    from rich.table import Table

    full = report["phases"]["full_server"]["wall_s"]
    table = Table(title=f"{report['corpus']}: {report['files']} files, {report['chunks']} chunks, "
                        f"{report['machine']['cpus']} CPUs, Prefect server on loopback")
    table.add_column("phase", no_wrap=True)
    for column in (*COLUMNS.values(), "wall × full"):
        table.add_column(column, justify="right")

    def row(label: str, r: dict) -> None:
        r = r | r.get("flow", {})  # a single run keeps the API's figures under "flow"; a median has them flat
        cells = ("-" if r[key] is None else f"{r[key]:.2f}" for key in COLUMNS)
        table.add_row(label, *cells, f"{r['wall_s'] / full:.3f}")

    phases = report["phases"]
    row("full_server", phases["full_server"])
    for phase in ("noop_server", "noop_worker"):
        if phase == "noop_worker":
            row("noop_worker warm-up", phases["noop_worker_warmup"])
        for i, run in enumerate(phases[phase]["runs"], start=1):
            row(f"{phase} #{i}", run)
        row(f"{phase} median", phases[phase]["median"])
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 170
    console.print(table)
    for k, v in report["ratios"].items():
        console.print(f"{k} = {v:.3f} (target <= {TARGET}): {'met' if v <= TARGET else 'MISSED'}")
    for phase in ("noop_server", "noop_worker"):
        console.print(f"\n[bold]{phase}, last run: seconds after the client started[/bold]")
        for line in report["phases"][phase]["runs"][-1]["flow"]["timeline"]:
            console.print(line, markup=False, highlight=False)


def measure(corpus: Path, env: dict[str, str], work: Path) -> dict:
    """Server, CLI phases, deployment and worker, worker runs; every process started here is stopped here."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, work)
    worker = None
    try:
        wait_for(lambda: healthy(f"{api}/health"), "prefect server", server, work / "server.log")
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"] = api  # this process reads flow runs back too
        os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]
        phases = {"full_server": cli_run("full_server", corpus, env, work)}
        phases["noop_server"] = {"runs": [cli_run(f"noop_server_{i}", corpus, env, work) for i in range(REPEATS)]}
        deploy(env, work)
        worker = start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1"], env, work)
        log = work / "worker.log"
        wait_for(lambda: "started!" in log.read_text(), "prefect worker", worker, log)
        phases["noop_worker_warmup"] = worker_run("noop_worker_warmup", corpus, env, work)
        phases["noop_worker"] = {"runs": [worker_run(f"noop_worker_{i}", corpus, env, work) for i in range(REPEATS)]}
    finally:
        if worker is not None:
            stop(worker, signal.SIGINT)
        stop(server, signal.SIGTERM)
    for phase in ("noop_server", "noop_worker"):
        phases[phase]["median"] = summary(phases[phase]["runs"])
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--work", type=Path, help="work folder (new or empty); default: a temporary one")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, store, Prefect database)")
    args = parser.parse_args()
    corpus = args.corpus.resolve()
    if args.work and args.work.exists() and any(args.work.iterdir()):
        raise SystemExit(f"--work {args.work} is not empty")
    work = (args.work or Path(tempfile.mkdtemp(prefix="docingest-deploy-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = make_env(work)
    os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]  # before this process imports Prefect (to read flow runs)
    print(f"corpus {corpus}; work folder {work}", file=sys.stderr)
    try:
        phases = measure(corpus, env, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    full = phases["full_server"]
    report = {
        "corpus": corpus.name, "files": sum(1 for p in corpus.rglob("*") if p.is_file()), "chunks": full["chunks"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M"), "worker_query_seconds": QUERY_SECONDS,
        "noop_worker_reported": f"{REPEATS} runs after one warm-up run (the worker's first flow run)",
        "phases": phases,
        "ratios": {
            "noop_server_over_full": round(phases["noop_server"]["median"]["wall_s"] / full["wall_s"], 3),
            "noop_worker_over_full": round(phases["noop_worker"]["median"]["wall_s"] / full["wall_s"], 3),
            "noop_worker_submit_to_completed_over_full": round(
                phases["noop_worker"]["median"]["submit_to_completed_s"] / full["wall_s"], 3),
        },
    }
    print_table(report)
    line = json.dumps(report)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
