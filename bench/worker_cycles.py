"""Does a Prefect process worker stop when told, and does each flow run leave nothing behind?

    python bench/worker_cycles.py [--cycles 20] [--runs 30] [--sigint-ignored] [--term-after-s S]
                                  [--work DIR] [--out FILE.json] [--keep]

In a work folder of its own it starts a real `prefect server start` on a loopback port, creates the pools
(deployments/setup_pools.py) and the `local` deployment of prefect.yaml, then runs ``--cycles`` worker lifetimes:
each starts `prefect worker start --pool local-pool --limit 1` (in a session of its own), submits one or two
deployment runs one after the other (``--runs`` in all, a repeating mix of *normal* — new documents: the fork server,
parse workers, the model —, *noop* — the same source again — and *failing* — a source that does not exist), and for
each run measures how long after its final state (the state's timestamp on the server) every process of the flow
run's tree was gone. Right after the cycle's last run reaches its final state it sends SIGTERM to the worker alone,
as an operator or Kubernetes would, and measures how long the worker takes to exit.

The flow run's tree is every process in the worker's session but the worker itself: a descendant that was orphaned
(reparented to init) stays in the session. While a tree lingers, the bench records each process (pid, parent, state,
command) and whether it holds one of the pipes the worker reads the flow run's output from (a process worker reads
them to their end before it counts the run as finished, so such a holder keeps the worker's --limit slot and its
shutdown waiting).

A worker that has not exited 60 s after SIGTERM is reported hung, with every process of its tree and each one's
Python stacks (py-spy, a test extra), and killed. ``--sigint-ignored`` starts the workers with SIGINT ignored, as a
background job of a non-interactive shell inherits it: Prefect 3.8.8's worker then never stops on SIGTERM (it sends
itself a SIGINT, which is discarded; docs/operations.md, "Signals").

Targets (docs/operations.md): every tree gone <= 5 s after its final state; the worker exits <= 10 s after SIGTERM in
every cycle. Reported, never asserted. Prints a table and one JSON line (also written to --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEPLOYMENT = "ingest-documents/local"
KINDS = ("normal", "noop", "failing")
TREE_TARGET_S, STOP_TARGET_S = 5.0, 10.0
GIVE_UP_S = 60.0  # a tree or a worker still there after this is recorded as hung (and killed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer in {timeout:.0f} s") from None
            time.sleep(0.3)


# -- processes ---------------------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, session id) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[3])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


def _pipes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("pipe:"):
                out.add(target)
    except OSError:
        pass
    return out


def session_members(sids: set[int], leader: int) -> list[int]:
    """Every running process in one of the sessions ``sids`` except ``leader``. Zombies are left out: they hold no
    pipe, file or memory, only a pid until their parent (here often init, for an orphan) reaps them."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != leader:
            st = _stat(int(entry))
            if st is not None and st[2] in sids and st[1] != "Z":
                pids.append(int(entry))
    return pids


def child_sessions(parent: int) -> set[int]:
    """The sessions of ``parent``'s children (Prefect starts each flow-run process in a session of its own)."""
    sids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] == parent:
                sids.add(st[2])
    return sids


def describe(pids: list[int], worker: int) -> list[dict]:
    """What each lingering process is, and whether it holds a pipe the worker reads."""
    worker_pipes = _pipes(worker)
    rows = []
    for pid in pids:
        st = _stat(pid)
        if st is None:
            continue
        rows.append({"pid": pid, "ppid": st[0], "state": st[1], "cmd": _cmdline(pid),
                     "holds_worker_pipe": bool(_pipes(pid) & worker_pipes)})
    return rows


# -- the Prefect side --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DOCINGEST_"))}
        self.env.update(
            HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
            PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false", PREFECT_API_URL=self.api,
            PREFECT_HOME=str(work / "prefect"), DOCINGEST_HOME=str(work / "home"),
            PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(work / "results"), PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_LOGGING_LEVEL="INFO", PWD=str(REPO),  # PWD: prefect.yaml's pull step reads {{ $PWD }}
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.server: subprocess.Popen | None = None

    def start_server(self) -> None:
        log = (self.work / "server.log").open("w")
        self.server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                        str(self.port)], cwd=REPO, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.api}/health", timeout=180)
        for cmd in ([sys.executable, "deployments/setup_pools.py", "local-pool"],
                    [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "local"]):
            done = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{cmd} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)

    def start_worker(self, n: int) -> subprocess.Popen:
        log = (self.work / f"worker-{n}.log").open("w")
        proc = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "local-pool", "--limit", "1"],
                                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.sessions = {proc.pid}  # type: ignore[attr-defined]  # every session its flow runs were seen in
        return proc

    def submit(self, parameters: dict) -> str:
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}):
            return str(run_deployment(DEPLOYMENT, parameters=parameters, timeout=0).id)

    def state(self, flow_run_id: str):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}), get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state


def make_docs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"note-{i}.md").write_text(f"# Note {i}\n\nThe gate code for building {i} changes every month.\n")


def run_one(bench: Bench, kind: str, index: int, docs: Path, worker: subprocess.Popen) -> dict:
    collection = f"c{index}" if kind == "normal" else "steady"
    source = str(docs) if kind != "failing" else str(docs.parent / "missing")
    submitted = time.time()
    parameters = {"source": source, "collection": collection}
    if kind == "noop":
        parameters["options"] = {"mode": "full"}  # a full re-sync with nothing to write or delete
    run_id = bench.submit(parameters)
    sids = {worker.pid}  # the worker's session, and each flow-run process's own, seen while it runs
    while True:
        sids |= child_sessions(worker.pid)
        worker.sessions |= sids  # type: ignore[attr-defined]
        state = bench.state(run_id)
        if state is not None and state.is_final():
            break
        if time.time() - submitted > 600 or worker.poll() is not None:
            return {"kind": kind, "run": run_id, "state": getattr(state, "type", None) and state.type.value,
                    "error": "no final state (worker exited)" if worker.poll() is not None else "no final state"}
        time.sleep(0.2)
    final_at = state.timestamp.timestamp()
    lingering: list[dict] = []
    while members := session_members(sids, worker.pid):
        if not lingering or time.time() - final_at > 2:
            lingering = describe(members, worker.pid)
        if time.time() - final_at > GIVE_UP_S:
            return {"kind": kind, "run": run_id, "state": state.type.value, "tree_gone_s": None,
                    "lingering": lingering}
        time.sleep(0.05)
    gone = time.time() - final_at
    row = {"kind": kind, "run": run_id, "state": state.type.value, "tree_gone_s": round(gone, 2)}
    if gone > 1.0:
        row["lingering"] = lingering
    return row


def stack_dump(pid: int) -> str | None:
    """Every thread's Python stack of a hung process, where py-spy is installed (not a dependency)."""
    spy = shutil.which("py-spy") or (str(BIN / "py-spy") if (BIN / "py-spy").exists() else None)
    if spy is None:
        return None
    done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    return (done.stdout + done.stderr)[-6000:]


def stop_worker(worker: subprocess.Popen) -> dict:
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(GIVE_UP_S)
    except subprocess.TimeoutExpired:
        lingering = describe(session_members(worker.sessions | child_sessions(worker.pid), -1),  # type: ignore[attr-defined]
                             worker.pid)
        stacks = {str(worker.pid): stack_dump(worker.pid)}
        for row in lingering:
            stacks[str(row["pid"])] = stack_dump(row["pid"])
        for pid in lingering:
            with contextlib.suppress(OSError):
                os.kill(pid["pid"], signal.SIGKILL)
        worker.wait()
        return {"worker_exit_s": None, "hung": lingering, "stacks": stacks}
    left = session_members(worker.sessions, worker.pid)  # type: ignore[attr-defined]
    row = {"worker_exit_s": round(time.monotonic() - sent, 2), "exit_code": worker.returncode}
    if left:
        row["left_running"] = describe(left, worker.pid)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigint-ignored", action="store_true",
                        help="start the workers with SIGINT ignored, as a background job of a non-interactive shell "
                        "(`cmd &`) or some CI runners and supervisors leave it; default: SIGINT at its default")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--term-after-s", type=float, default=0.0,
                        help="send SIGTERM up to this many seconds (random) after the last run's final state, "
                        "as a caller polling every few seconds would (run_deployment polls every 5 s)")
    args = parser.parse_args()
    # Workers inherit this process's SIGINT disposition when it is "ignored" (exec keeps SIG_IGN, resets handlers).
    signal.signal(signal.SIGINT, signal.SIG_IGN if args.sigint_ignored else signal.default_int_handler)
    work = args.work or Path(tempfile.mkdtemp(prefix="docingest-worker-cycles-"))
    work.mkdir(parents=True, exist_ok=True)
    docs = work / "docs"
    make_docs(docs, 3)
    # runs per cycle: spread --runs over --cycles (one or two each); kinds repeat normal, noop, failing
    per_cycle = [args.runs // args.cycles + (1 if c < args.runs % args.cycles else 0) for c in range(args.cycles)]
    bench = Bench(work)
    runs, cycles = [], []
    try:
        bench.start_server()
        index = 0
        for c, count in enumerate(per_cycle):
            worker = bench.start_worker(c)
            for _ in range(count):
                row = run_one(bench, KINDS[index % len(KINDS)], index, docs, worker)
                row["cycle"] = c
                runs.append(row)
                print(json.dumps(row), flush=True)
                index += 1
            if args.term_after_s:
                time.sleep(random.uniform(0, args.term_after_s))
            stop = {"cycle": c, **stop_worker(worker)}
            cycles.append(stop)
            print(json.dumps(stop), flush=True)
    finally:
        bench.stop_server()
    trees = [r["tree_gone_s"] for r in runs if r.get("tree_gone_s") is not None]
    exits = [c["worker_exit_s"] for c in cycles if c.get("worker_exit_s") is not None]
    summary = {
        "bench": "worker_cycles", "machine": platform.machine(), "cpus": os.cpu_count(),
        "sigint_ignored": args.sigint_ignored,
        "runs": len(runs), "runs_by_state": {s: sum(r.get("state") == s for r in runs)
                                             for s in sorted({str(r.get("state")) for r in runs})},
        "tree_gone_s": {"max": max(trees, default=None), "p50": statistics.median(trees) if trees else None,
                        "hung": sum(r.get("tree_gone_s") is None for r in runs)},
        "worker_exit_s": {"max": max(exits, default=None), "p50": statistics.median(exits) if exits else None,
                          "hung": sum(c.get("worker_exit_s") is None for c in cycles)},
        "targets": {"tree_gone_s_max": TREE_TARGET_S, "worker_exit_s_max": STOP_TARGET_S},
        "met": bool(trees) and len(trees) == len(runs) and max(trees) <= TREE_TARGET_S
        and len(exits) == len(cycles) and max(exits) <= STOP_TARGET_S,
        "run_rows": runs, "cycle_rows": cycles,
    }
    print(f"{'runs':>6} {'tree gone max':>14} {'p50':>6} {'cycles':>7} {'worker exit max':>16} {'p50':>6}  met")
    print(f"{len(runs):>6} {summary['tree_gone_s']['max']!s:>14} {summary['tree_gone_s']['p50']!s:>6} "
          f"{len(cycles):>7} {summary['worker_exit_s']['max']!s:>16} {summary['worker_exit_s']['p50']!s:>6}  "
          f"{summary['met']}")
    line = json.dumps(summary)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
