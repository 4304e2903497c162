"""End to end with a real Prefect server: `prefect server start` on a loopback port (SQLite), the pools and priority
queues from deployments/setup_pools.py, `prefect deploy` from prefect.yaml, a process worker, runs triggered with
`prefect deployment run --watch` and with `run_deployment`, a critical-queue run that jumps the line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


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

    # 1. The CLI way, watched to the end. (Time bounds in this module: a two-document deployment run takes ~15-25 s
    #    here from its submission, a worker starts in ~5 s; the whole first test took 98 s in a full suite run. The
    #    400 s and 300 s bounds are over 10x a run, the 60 s for the service to create a run over 10x its ~2 s.)
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
                    + stack.report(worker.pid))
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

    # 4. The collection holds the documents (the embedded store under the worker's DOCINGEST_HOME; one process opens
    #    it at a time, so the worker and its flow-run processes are stopped first).
    stack.stop()
    assert [len(stack.store_snapshot(c)["points"]) for c in ("e2e", "e2e-u", "e2e-n")] == [2, 2, 2]


def test_upload_service_hands_jobs_to_a_deployment_on_the_priority_queue(stack, tmp_path, free_port, wait_http):
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


def test_cli_run_against_a_server_ships_its_logs_to_the_run_and_keeps_the_terminal_quiet(stack, tmp_path,
                                                                                         make_encrypted_pdf):
    """The run's Logs tab in the UI: the flow's and tasks' INFO lines and one WARNING per failed or skipped document,
    read back through the server's logs API; the terminal shows the summary table only, as without a server."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings


    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keys.md").write_text("# Keys\n\nRotate the signing keys every ninety days with the vault CLI.\n")
    (docs / "empty.md").write_text("")
    make_encrypted_pdf(docs / "salaries.pdf", "Quarterly salaries are confidential")
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
    # A failed document's task run is Failed, with its reason in one line: no traceback through Prefect's engine.
    failed = [message for level, message in messages if level == 40 and "salaries.pdf" in message]
    assert failed and not [m for m in failed if "Traceback" in m], failed
