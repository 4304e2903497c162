"""End to end with a real Prefect server: `prefect server start` on a loopback port (SQLite), the pools and priority
queues from deployments/setup_pools.py, `prefect deploy` from prefect.yaml, a process worker, runs triggered with
`prefect deployment run --watch` and with `run_deployment`, a critical-queue run that jumps the line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import free_port, prefect_home, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DOCINGEST_"))}
        self.env.update(
            PREFECT_HOME=prefect_home(tmp / "prefect-home"), PREFECT_API_URL=self.api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp / "results"), DOCINGEST_HOME=str(tmp / "docingest-home"),
            HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PREFECT_LOGGING_LEVEL="INFO",
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        log = (self.tmp / f"{name}.log").open("w")
        proc = subprocess.Popen(list(args), cwd=REPO, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        out = self.tmp / "cmd.log"
        with out.open("w") as fh:
            proc = subprocess.run(list(args), cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        proc.output = out.read_text()  # type: ignore[attr-defined]
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    server = s.start("server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(s.port))
    wait_http(f"{s.api}/health", server, s.tmp / "server.log", timeout=120)
    try:
        yield s
    finally:
        s.stop()


def process_report(pid: int) -> str:
    """Every process of ``pid``'s tree (children by parent, orphans by session) with its state, command and open
    pipes, and each one's Python stacks where py-spy is installed: what a hung worker waits on."""
    import shutil

    def stat(p: int):
        try:
            raw = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            return None
        fields = raw[raw.rindex(")") + 2:].split()
        return int(fields[1]), fields[0], int(fields[3])

    procs = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := stat(int(e)))}
    tree, sessions = {pid}, {pid}
    for _ in range(8):  # children, grandchildren, ... and everything in their sessions
        tree |= {p for p, (ppid, _, sid) in procs.items() if ppid in tree or sid in sessions}
        sessions |= {procs[p][2] for p in tree if p in procs}
    lines, spy = [], shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")  # a test extra
    for p in sorted(tree):
        if p not in procs:
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
            fds = sorted(os.readlink(f"/proc/{p}/fd/{fd}") for fd in os.listdir(f"/proc/{p}/fd"))
        except OSError:
            cmd, fds = "?", []
        lines.append(f"{p} ppid={procs[p][0]} state={procs[p][1]} sid={procs[p][2]} {cmd}\n"
                     f"  pipes: {[f for f in fds if f.startswith('pipe:')]}")
        if spy:
            done = subprocess.run([spy, "dump", "--pid", str(p)], capture_output=True, text=True, timeout=60)
            lines.append(done.stdout[-4000:] + done.stderr[-500:])
    return "\n".join(lines)


def flow_runs(api: str, deployment: str | None = None):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        if deployment:
            dep = client.read_deployment_by_name(deployment)
            runs = [r for r in runs if r.deployment_id == dep.id]
        return runs


def test_deploy_worker_and_runs_from_cli_python_and_a_priority_queue(stack, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keys.md").write_text("# Keys\n\nRotate the signing keys every ninety days with the vault CLI.\n")
    (docs / "lunch.md").write_text("# Lunch\n\nThe cafeteria serves soup on Fridays.\n")

    pools = stack.run(sys.executable, "deployments/setup_pools.py", "local-pool")
    assert pools.returncode == 0, pools.output
    deploy = stack.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "local", "--name", "local-urgent")
    assert deploy.returncode == 0, deploy.output
    worker = stack.start("worker", str(BIN / "prefect"), "worker", "start", "--pool", "local-pool", "--limit", "1")

    # 1. The CLI way, watched to the end.
    run = stack.run(str(BIN / "prefect"), "deployment", "run", "ingest-documents/local", "--param",
                    f"source={docs}", "--param", "collection=e2e", "--watch", timeout=400)
    assert run.returncode == 0, run.output + stack.log("worker")
    assert "Completed" in run.output

    # 2. The Python way.
    with temporary_settings({PREFECT_API_URL: stack.api}):
        flow_run = run_deployment("ingest-documents/local", parameters={
            "source": str(docs), "collection": "e2e", "options": {"mode": "full"}}, timeout=400)
        assert flow_run.state.is_completed(), (flow_run.state, stack.log("worker"))
        with get_client(sync_client=True) as client:
            summary = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["docingest-e2e-summary"])))
            table = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["docingest-e2e-documents"])))
    assert len(summary) == 2 and len(table) == 2  # one per run, under the same key
    latest = max(summary, key=lambda a: a.created).data
    assert "mode **full**" in latest and "| 2 | 0 | 0 | 2 |" in latest  # the 2nd run: both unchanged

    # 3. Priorities: with the worker stopped, a normal run is queued first and a critical one after it; the worker
    #    (one run at a time) starts the critical run first.
    worker.terminate()
    try:  # measured 0.7-1.6 s (bench/worker_cycles.py, loaded machine); the margin is for a loaded 2-core CI run
        worker.wait(90)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not stop within 90 s of SIGTERM:\n" + stack.log("worker") + "\n"
                    + process_report(worker.pid))
    with temporary_settings({PREFECT_API_URL: stack.api}):
        normal = run_deployment("ingest-documents/local", parameters={"source": str(docs), "collection": "e2e-n"},
                                timeout=0)
        time.sleep(1)  # the normal run is older by a clear second: the queue's priority, not age, must decide
        urgent = run_deployment("ingest-documents/local-urgent", parameters={"source": str(docs),
                                                                            "collection": "e2e-u"}, timeout=0)
    stack.start("worker2", str(BIN / "prefect"), "worker", "start", "--pool", "local-pool", "--limit", "1")
    deadline = time.monotonic() + 400
    while True:
        with temporary_settings({PREFECT_API_URL: stack.api}), get_client(sync_client=True) as client:
            n, u = client.read_flow_run(normal.id), client.read_flow_run(urgent.id)
        if n.state.is_final() and u.state.is_final():
            break
        assert time.monotonic() < deadline, (n.state, u.state, stack.log("worker2"))
        time.sleep(2)
    assert n.state.is_completed() and u.state.is_completed(), stack.log("worker2")
    assert u.start_time < n.start_time, "the critical-queue run should start first"

    # 4. The collection holds the documents (Qdrant local mode under the worker's DOCINGEST_HOME; local mode allows
    #    one process per folder, so the worker and its flow-run processes are stopped first).
    from docingest.core.store import QdrantLocation, QdrantStore

    stack.stop()

    store = QdrantStore(QdrantLocation(path=tmp_path / "docingest-home" / "qdrant"))
    assert store.count("e2e") == 2 and store.count("e2e-u") == 2 and store.count("e2e-n") == 2


def test_upload_service_hands_jobs_to_a_deployment_on_the_priority_queue(stack, tmp_path):
    """DOCINGEST_UPLOAD_DEPLOYMENT: a completed upload becomes a run of the deployment on the queue named by its
    priority; the job's state, progress and per-document outcome come from the flow run and its artifacts."""
    import base64
    import hashlib
    import json

    import httpx
    import jwt
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from websockets.sync.client import connect

    assert stack.run(sys.executable, "deployments/setup_pools.py", "local-pool").returncode == 0
    deploy = stack.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "local")
    assert deploy.returncode == 0, deploy.output
    stack.env.update(DOCINGEST_JWT_SECRET="s" * 40, DOCINGEST_UPLOAD_DEPLOYMENT="ingest-documents/local")
    port = free_port()
    serve = stack.start("serve", str(BIN / "docingest"), "serve", "--host", "127.0.0.1", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", serve, tmp_path / "serve.log", timeout=120)
    client = httpx.Client(base_url=base, timeout=60)
    auth = {"Authorization": "Bearer " + jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600,
                                                     "collections": ["desk"], "priorities": ["high"]}, "s" * 40,
                                                    algorithm="HS256")}
    assert client.get("/health").json() == {"ok": True}  # without a token: up or down, nothing more
    health = client.get("/health", headers=auth).json()
    assert health["prefect"] is True and health["jobs_mode"] == "deployment" and health["qdrant"] is None, health

    data = b"# Badge policy\n\nVisitors collect a temporary badge at the north entrance and return it by six.\n"
    made = client.post("/api/v1/uploads", headers=auth, json={"filename": "badges.md", "size": len(data),
                                                              "collection": "desk", "priority": "high"}).json()
    put = client.put(f"/api/v1/uploads/{made['upload_id']}/parts/1", content=data, headers={
        **auth, "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()})
    assert put.status_code == 200
    job_id = client.post(f"/api/v1/uploads/{made['upload_id']}/complete", headers=auth, json={}).json()["job_id"]
    # No worker yet: the run waits on the "high" queue, and the job says queued.
    deadline = time.monotonic() + 60
    while not (job := client.get(f"/api/v1/jobs/{job_id}", headers=auth).json())["flow_run_id"]:
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "queued"
    with temporary_settings({PREFECT_API_URL: stack.api}), get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(job["flow_run_id"])
    assert run.work_queue_name == "high" and run.parameters["collection"] == "desk"

    stack.start("worker", str(BIN / "prefect"), "worker", "start", "--pool", "local-pool", "--limit", "1")
    messages = []
    with connect(base.replace("http://", "ws://") + "/api/v1/ws/jobs", open_timeout=30) as ws:
        ws.send(json.dumps({"token": auth["Authorization"][7:], "subscribe": [job_id]}))
        while True:
            message = json.loads(ws.recv(timeout=300))
            messages.append(message)
            if message["state"] in ("completed", "failed"):
                break
    final = messages[-1]
    assert final["state"] == "completed", (final, stack.log("worker"))
    assert final["counts"]["new"] == 1 and final["chunks"] >= 1 and final["progress"] == 100.0
    assert "running" in [m["state"] for m in messages]


def test_cli_run_against_a_server_ships_its_logs_to_the_run_and_keeps_the_terminal_quiet(stack, tmp_path):
    """The run's Logs tab in the UI: the flow's and tasks' INFO lines and one WARNING per failed or skipped document,
    read back through the server's logs API; the terminal shows the summary table only, as without a server."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from conftest import write_encrypted_pdf

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keys.md").write_text("# Keys\n\nRotate the signing keys every ninety days with the vault CLI.\n")
    (docs / "empty.md").write_text("")
    write_encrypted_pdf(docs / "salaries.pdf", "Quarterly salaries are confidential")
    done = stack.run(str(BIN / "docingest"), "ingest", str(docs), "-c", "logs", "--json")
    assert done.returncode == 1, done.output  # one document failed
    lines = done.output.strip().splitlines()
    result = json.loads(lines[-1])
    assert not [line for line in lines[:-1] if "INFO" in line or "Flow run" in line or "Task run" in line], lines
    with temporary_settings({PREFECT_API_URL: stack.api}), get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[result["flow_run_id"]])))
    messages = [(log.level, log.message) for log in logs]
    assert any(level == 20 and message.startswith("ingesting file://") for level, message in messages), messages
    assert any(level == 20 and message.startswith("done in") for level, message in messages), messages
    assert any(log.level == 20 and log.task_run_id is not None for log in logs), messages  # the tasks' own lines
    warnings = [message for level, message in messages if level == 30]
    assert len([w for w in warnings if "salaries.pdf" in w]) == 1, warnings
    assert [w for w in warnings if "salaries.pdf" in w][0].endswith("encrypted PDF: a password is needed to open it")
    assert len([w for w in warnings if "empty.md" in w]) == 1, warnings
    assert not [w for w in warnings if "/tmp/" in w or "docingest-local" in w], warnings


def _tree(root: int) -> set[int]:
    """``root``'s running descendants, orphans included: each flow-run process has a session of its own (Prefect's
    runner starts it with one), which its fork server and parse workers keep."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2:].split()
            if fields[0] != "Z":
                procs[int(entry)] = (int(fields[1]), int(fields[3]))
    tree = {p for p, (ppid, _) in procs.items() if ppid == root}
    sessions = {procs[p][1] for p in tree} - {procs.get(root, (0, 0))[1]}
    return tree | {p for p, (_, sid) in procs.items() if sid in sessions}


def test_cancelling_a_run_in_its_parse_or_embed_stage_stops_it_and_the_next_run_resumes_cleanly(stack, tmp_path):
    """`prefect flow-run cancel` (the UI's Cancel) on a process worker, once while a parse worker is stuck in a
    document and once while the run is embedding (two pools written already): the run ends Cancelled, every process
    of its tree ends (its fork server and parse workers too), the collection's lock is free, and the next run of the
    same source ends with exactly a clean run's points (ids, payloads, vectors) and manifest."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(6):
        (docs / f"d{n}.md").write_text(f"# Room {n}\n\nRoom {n} is booked through the front desk, {n} days ahead.\n")
    assert stack.run(sys.executable, "deployments/setup_pools.py", "local-pool").returncode == 0
    deploy = stack.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "local")
    assert deploy.returncode == 0, deploy.output
    worker = stack.start("worker", str(BIN / "prefect"), "worker", "start", "--pool", "local-pool", "--limit", "1")
    options = {"embed": {"pool_size": 1}}  # one chunk a pool: the embed stage is several calls, some written

    def run(collection: str, timeout: float = 400, **env: str):
        with temporary_settings({PREFECT_API_URL: stack.api}):
            return run_deployment("ingest-documents/local", timeout=timeout, job_variables={"env": env},
                                  parameters={"source": str(docs), "collection": collection, "options": options})

    def state(flow_run_id):
        with temporary_settings({PREFECT_API_URL: stack.api}), get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state

    # The parse-stage run comes first: parse results are cached by content, so a document parsed once is never
    # parsed again (by the later runs, the clean one included).
    for stage, fault in (("parse", "stall:d3.md"), ("embed", "hold:in-embed:3")):
        report = tmp_path / f"{stage}.reached"
        held = run(f"c-{stage}", timeout=0, DOCINGEST_FAULT=fault, DOCINGEST_FAULT_REPORT=str(report))
        deadline = time.monotonic() + 300  # the run starts (~15 s here) and reaches the fault
        while not report.exists():
            assert time.monotonic() < deadline and not state(held.id).is_final(), (state(held.id), stack.log("worker"))
            time.sleep(0.2)
        tree = _tree(worker.pid)
        assert tree, "the flow run's processes were not found"
        cancelled_at = time.monotonic()
        cancel = stack.run(str(BIN / "prefect"), "flow-run", "cancel", str(held.id))
        assert cancel.returncode == 0, cancel.output
        # Measured here: Cancelled and the whole tree gone 12.7 s after the cancel while parsing, 36 s while
        # embedding (the held encode call never returns, so Prefect waits its 30 s grace, then kills the process);
        # 150 s is over 4x that, for a loaded 2-core CI machine.
        deadline = time.monotonic() + 150
        while not (state(held.id).is_cancelled() and not any(_running(p) for p in tree)):
            assert time.monotonic() < deadline, (stage, state(held.id), process_report(worker.pid), stack.log("worker"))
            time.sleep(0.2)
        print(f"cancel in the {stage} stage: Cancelled and its tree gone {time.monotonic() - cancelled_at:.1f} s "
              "after `prefect flow-run cancel` was started")
        resumed = run(f"c-{stage}")  # would wait on a lock the cancelled run still held
        assert resumed.state.is_completed(), (stage, resumed.state, stack.log("worker"))
    assert run("clean").state.is_completed(), stack.log("worker")

    from docingest.core.store import QdrantLocation, QdrantStore

    stack.stop()  # the embedded store is the worker's until its processes are gone
    store = QdrantStore(QdrantLocation(path=tmp_path / "docingest-home" / "qdrant"))
    clean = _snapshot(store, "clean")
    assert len(clean["points"]) == 6
    for stage in ("parse", "embed"):
        assert _snapshot(store, f"c-{stage}") == clean, stage


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _snapshot(store, collection: str) -> dict:
    """Point id -> payload (without the write timestamp) and vector; the manifest's versions, statuses, chunks."""
    points = {p["id"]: ({k: v for k, v in p["payload"].items() if k != "ingested_at"},
                        [round(x, 5) for x in p["vector"][""]])
              for p in store.points(store.resolve(collection), with_vectors=True)}
    scope = next(iter(points.values()))[0]["source_uri"]
    manifest = {r.path: (r.version, r.status.value, r.chunks)
                for r in store.manifest(store.resolve(collection), scope).values()}
    return {"points": points, "manifest": manifest}


def _wait_for_line(stack: Stack, name: str, text: str, proc: subprocess.Popen, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while text not in stack.log(name):
        assert proc.poll() is None and time.monotonic() < deadline, stack.log(name)
        time.sleep(0.2)


def test_a_worker_started_with_sigint_ignored_does_not_stop_on_sigterm(stack):
    """The cause of the worker that did not stop (Prefect 3.8.8, prefect/utilities/processutils: the SIGTERM handling
    from PrefectHQ/prefect#9530): on SIGTERM a worker sends itself SIGINT, and on that SIGINT it restores the SIGINT
    disposition it found at start and sends itself SIGINT again. A worker started with SIGINT ignored (a background
    job of a non-interactive shell, `bash .ci/run &`, some CI runners and supervisors) found "ignored": the second
    SIGINT is discarded and the worker polls on, forever, until a second SIGTERM, which Prefect turns into SIGKILL.
    Started with SIGINT at its default, the same worker stops at once. When this test fails, Prefect has fixed it and
    the workaround (tests/conftest.py, bench/worker_cycles.py, docs/operations.md "Signals") can go."""
    assert stack.run(sys.executable, "deployments/setup_pools.py", "local-pool").returncode == 0
    prefect = str(BIN / "prefect")
    ignoring = stack.start("ignoring", sys.executable, "-c", "import os, signal, sys; "
                           "signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])",
                           prefect, "worker", "start", "--pool", "local-pool")
    default = stack.start("default", prefect, "worker", "start", "--pool", "local-pool")
    for name, proc in (("ignoring", ignoring), ("default", default)):
        _wait_for_line(stack, name, "started!", proc)
    ignoring.terminate()
    default.terminate()
    assert default.wait(60) == 0, stack.log("default")  # measured: 0.7-1.6 s (bench/worker_cycles.py)
    time.sleep(15)  # 10x the time the default worker took: the ignoring one is still polling
    assert ignoring.poll() is None, stack.log("ignoring")
    assert "Received SIGINT. Sending SIGINT" in stack.log("ignoring") and "stopped" not in stack.log("ignoring")
    ignoring.terminate()  # the second SIGTERM: Prefect's escalation
    assert ignoring.wait(60) == -signal.SIGKILL


def test_a_run_whose_worker_and_process_die_together_is_marked_crashed_and_retried_by_another_worker(stack, tmp_path):
    """The worker's machine gone, as Prefect sees it: the worker and its flow-run process SIGKILLed together while the
    run embeds (two pools written). The run's heartbeats stop, the automation of deployments/setup_pools.py marks it
    Crashed, the other one schedules it again, a new worker picks it up and resumes, and the collection ends equal to a
    clean run's (points and manifest)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(6):
        (docs / f"d{n}.md").write_text(f"# Desk {n}\n\nDesk {n} is cleaned every {n + 2} days by the night crew.\n")
    pools = stack.run(sys.executable, "deployments/setup_pools.py", "local-pool")
    assert pools.returncode == 0 and "automation" in pools.output, pools.output
    deploy = stack.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "local")
    assert deploy.returncode == 0, deploy.output
    report = tmp_path / "reached"
    doomed = stack.start("doomed", str(BIN / "prefect"), "worker", "start", "--pool", "local-pool",
                         DOCINGEST_FAULT="hold:in-embed:3", DOCINGEST_FAULT_REPORT=str(report))
    options = {"embed": {"pool_size": 1}}  # one chunk a pool: two are written before the third is held

    def client():
        return get_client(sync_client=True)

    with temporary_settings({PREFECT_API_URL: stack.api}):
        run = run_deployment("ingest-documents/local", timeout=0,
                             parameters={"source": str(docs), "collection": "crash", "options": options})
        deadline = time.monotonic() + 300  # the worker starts, picks the run up and reaches the fault (~30 s here)
        while not report.exists():
            assert time.monotonic() < deadline and doomed.poll() is None, stack.log("doomed")
            time.sleep(0.2)
        tree = _tree(doomed.pid)
        for pid in [doomed.pid, *tree]:  # the machine goes: worker and flow-run processes at once
            os.kill(pid, signal.SIGKILL)
        doomed.wait()
        killed_at = time.monotonic()
        stack.start("replacement", str(BIN / "prefect"), "worker", "start", "--pool", "local-pool")
        # The last heartbeat is at most 30 s old; the run is Crashed 90 s after it, then scheduled again and picked
        # up within a worker poll (10 s). Measured here: Completed ~2.5 min after the kill; 8 min is the margin.
        deadline = time.monotonic() + 480
        while True:
            with client() as c:
                current = c.read_flow_run(run.id)
            if current.state.is_final() and not current.state.is_crashed():
                break
            assert time.monotonic() < deadline, (current.state, stack.log("replacement"))
            time.sleep(2)
        with client() as c:
            history = [(st.type.value, st.name, st.message) for st in c.read_flow_run_states(run.id)]
    print(f"crash: final state {time.monotonic() - killed_at:.0f} s after the kill; states {history}")
    assert current.state.is_completed(), (current.state, history, stack.log("replacement"))
    assert current.run_count == 2, history
    crashed = [h for h in history if h[0] == "CRASHED"]
    assert crashed and "no heartbeat" in crashed[0][2], history
    assert any(h[1] == "AwaitingRetry" for h in history), history
    with temporary_settings({PREFECT_API_URL: stack.api}):
        clean = run_deployment("ingest-documents/local", timeout=400,
                               parameters={"source": str(docs), "collection": "clean", "options": options})
    assert clean.state.is_completed(), stack.log("replacement")

    from docingest.core.store import QdrantLocation, QdrantStore

    stack.stop()
    store = QdrantStore(QdrantLocation(path=tmp_path / "docingest-home" / "qdrant"))
    expected = _snapshot(store, "clean")
    assert len(expected["points"]) == 6 and _snapshot(store, "crash") == expected
