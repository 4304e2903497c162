"""The upload service for real: `docingest serve` (uvicorn) on a loopback port, httpx and a WebSocket client."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "test-secret-of-at-least-32-bytes-0123456789"
PART = 1024
EXE = Path(sys.executable).with_name("docingest")
PE = b"MZ" + b"\x00" * 58 + (64).to_bytes(4, "little") + b"PE\x00\x00" + b"\x00" * 200  # a PE header, enough


def token(user: str, secret: str = SECRET) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600, "collections": ["*"],
                       "priorities": ["high", "normal"]}, secret, algorithm="HS256")


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def handbook_text() -> bytes:
    body = "\n\n".join(
        f"Paragraph {i}: the platform team rotates the signing keys every ninety days and keeps the previous key "
        f"valid for one week of grace so that running clients can verify older tokens." for i in range(14))
    return f"# Key rotation policy\n\n{body}\n".encode()


@pytest.fixture
def service(tmp_path, start_service, reap):
    proc, base, env, log = start_service(tmp_path, DOCINGEST_JWT_SECRET=SECRET, DOCINGEST_UPLOAD_PART_SIZE=str(PART),
                                         DOCINGEST_RATE_LIMIT_UPLOADS_PER_MIN="12")
    try:
        yield base, proc, env, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reap(tmp_path / "ph")


def wait_job(client: httpx.Client, job_id: str, user: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(user)).json()
        if job["state"] in ("completed", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_resumable_upload_to_search_with_progress_isolation_and_checks(service, tmp_path):
    from websockets.sync.client import connect

    base, proc, env, log = service
    client = httpx.Client(base_url=base, timeout=60)
    assert client.get("/health").json()["ok"] is True
    assert client.post("/api/v1/uploads", json={}).status_code == 401  # no token
    assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token('x', 'wrong-secret' * 4)}"}
                      ).status_code == 401

    # A 3-part upload; one corrupted part is refused and re-sent; the client "drops" and resumes from the status.
    data = handbook_text()
    assert 2 * PART < len(data) <= 3 * PART
    created = client.post("/api/v1/uploads", headers=auth("alice"), json={
        "filename": "key-rotation.md", "size": len(data), "content_type": "text/markdown", "collection": "handbook",
        "priority": "high"})
    assert created.status_code == 201, created.text
    up = created.json()
    assert (up["parts"], up["part_size"]) == (3, PART)
    uid = up["upload_id"]
    parts = [data[i:i + PART] for i in range(0, len(data), PART)]
    ok = client.put(f"/api/v1/uploads/{uid}/parts/1", content=parts[0], headers={**auth("alice"),
                                                                                  "Content-MD5": md5(parts[0])})
    assert ok.status_code == 200 and ok.json()["etag"] == hashlib.md5(parts[0]).hexdigest()
    corrupted = bytes([parts[1][0] ^ 1]) + parts[1][1:]
    bad = client.put(f"/api/v1/uploads/{uid}/parts/2", content=corrupted,
                     headers={**auth("alice"), "Content-MD5": md5(parts[1])})
    assert bad.status_code == 400 and "mismatch" in bad.json()["detail"]
    status = client.get(f"/api/v1/uploads/{uid}", headers=auth("alice")).json()
    assert status["received"] == [1] and status["missing"] == [2, 3]
    for n in status["missing"]:
        r = client.put(f"/api/v1/uploads/{uid}/parts/{n}", content=parts[n - 1],
                       headers={**auth("alice"), "Content-MD5": md5(parts[n - 1])})
        assert r.status_code == 200
    again = client.put(f"/api/v1/uploads/{uid}/parts/3", content=parts[2],
                       headers={**auth("alice"), "Content-MD5": md5(parts[2])})
    assert again.status_code == 200  # idempotent
    assert client.get(f"/api/v1/uploads/{uid}", headers=auth("alice")).json()["missing"] == []

    # Another user sees nothing of it: 404, not 403.
    assert client.get(f"/api/v1/uploads/{uid}", headers=auth("bob")).status_code == 404
    assert client.post(f"/api/v1/uploads/{uid}/complete", headers=auth("bob"), json={}).status_code == 404

    done = client.post(f"/api/v1/uploads/{uid}/complete", headers=auth("alice"),
                       json={"sha256": hashlib.sha256(data).hexdigest()})
    assert done.status_code == 200, done.text
    job_id = done.json()["job_id"]
    ws_url = base.replace("http://", "ws://") + "/api/v1/ws/jobs"
    messages = []
    with connect(ws_url, open_timeout=30) as ws:
        ws.send(json.dumps({"token": token("alice"), "subscribe": [job_id]}))
        while True:
            message = json.loads(ws.recv(timeout=240))
            messages.append(message)
            if message["state"] in ("completed", "failed"):
                break
    states = [m["state"] for m in messages]
    assert states[-1] == "completed", messages[-1]
    assert messages[-1]["progress"] == 100.0 and messages[-1]["counts"]["new"] == 1
    assert "running" in states or len(messages) == 1
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth("alice")).json()
    assert job["state"] == "completed" and job["document"] == f"{uid}/key-rotation.md"
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth("bob")).status_code == 404
    assert client.get("/api/v1/jobs", headers=auth("bob")).json() == {"jobs": []}
    assert [j["job_id"] for j in client.get("/api/v1/jobs", headers=auth("alice")).json()["jobs"]] == [job_id]

    # Traversal and control characters in a name are neutralized; an executable named .pdf is refused.
    evil = client.post("/api/v1/documents", headers=auth("alice"), data={"collection": "handbook"},
                       files={"file": ("../../../etc/cron.d/\x07evil.md", b"# Notes\n\nharmless text\n",
                                       "text/markdown")})
    assert evil.status_code == 201, evil.text
    folder, name = evil.json()["document"].split("/")  # <upload id>/<one safe name>
    assert name.endswith("evil.md") and ".." not in name and name.isprintable(), name
    assert wait_job(client, evil.json()["job_id"], "alice")["state"] == "completed"
    exe = client.post("/api/v1/documents", headers=auth("alice"), data={"collection": "handbook"},
                      files={"file": ("report.pdf", PE, "application/pdf")})
    assert exe.status_code == 415 and "executable" in exe.json()["detail"]
    assert "/" not in exe.json()["detail"]  # no internal paths in error bodies

    # Rate limit on uploads: 12 a minute per user (set for this test), then 429 with Retry-After; others unaffected.
    codes = [client.post("/api/v1/uploads", headers=auth("dave"), json={
        "filename": f"d{i}.md", "size": 10, "collection": "handbook"}).status_code for i in range(13)]
    assert codes[:12] == [201] * 12 and codes[12] == 429
    limited = client.post("/api/v1/uploads", headers=auth("dave"), json={"filename": "x.md", "size": 10,
                                                                         "collection": "handbook"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert client.post("/api/v1/uploads", headers=auth("erin"), json={"filename": "x.md", "size": 10,
                                                                      "collection": "handbook"}).status_code == 201
    aborted = client.post("/api/v1/uploads", headers=auth("erin"), json={"filename": "y.md", "size": 10,
                                                                         "collection": "handbook"}).json()
    assert client.delete(f"/api/v1/uploads/{aborted['upload_id']}", headers=auth("erin")).status_code == 204
    assert client.get(f"/api/v1/uploads/{aborted['upload_id']}", headers=auth("erin")).status_code == 404

    metrics = client.get("/metrics", headers=auth("alice")).text
    assert "docingest_upload_md5_rejects_total 1.0" in metrics
    assert 'docingest_jobs{state="completed"} 2.0' in metrics

    # Graceful shutdown, then the document is searchable from the CLI (local Qdrant is one process at a time).
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal, so the exit status says "terminated by SIGTERM".
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()[-2000:]
    hits = subprocess.run([str(EXE), "search", "how often are the signing keys rotated", "-c", "handbook", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert hits.returncode == 0, hits.stderr[-2000:]
    top = json.loads(hits.stdout)["hits"][0]
    assert top["path"] == f"{uid}/key-rotation.md" and "ninety days" in top["text"]


def test_every_format_ingest_reads_uploads_and_is_indexed(tmp_path, corpus, start_service, reap):
    """The smallest file of each format of the shared corpus: what `ingest` reads (core/formats.py), an upload
    accepts and indexes, with the content checks passing; the one legacy .doc is refused as the named subset."""
    from docingest.core.formats import NOT_UPLOADABLE, UPLOADABLE, extension
    from docingest.core.parse import check_supported
    from docingest.exceptions import UnsupportedDocumentError
    from docingest.options import ParseOptions

    smallest: dict[str, Path] = {}
    for path in sorted((p for p in corpus.rglob("*.*") if p.is_file()), key=lambda p: (p.stat().st_size, str(p))):
        smallest.setdefault(extension(path), path)
    readable = {}
    for ext, path in smallest.items():
        try:
            check_supported(path, ParseOptions())
        except UnsupportedDocumentError:  # images without Tesseract, .doc without LibreOffice: ingest skips them too
            continue
        readable[ext] = path
    assert {"pdf", "docx", "pptx", "xlsx", "odt", "html", "md", "csv", "asciidoc", "xml", "nxml", "tex", "vtt"} <= set(
        readable)
    assert set(readable) - NOT_UPLOADABLE <= UPLOADABLE

    proc, base, env, log = start_service(tmp_path, DOCINGEST_JWT_SECRET=SECRET)
    try:
        client = httpx.Client(base_url=base, timeout=60)
        jobs = {}
        for ext, path in readable.items():
            if ext in NOT_UPLOADABLE:
                continue
            made = client.post("/api/v1/documents", headers=auth("alice"), data={"collection": "formats"},
                               files={"file": (path.name, path.read_bytes(), "application/octet-stream")})
            assert made.status_code == 201, (ext, made.text)
            jobs[ext] = made.json()["job_id"]
        doc = corpus / "doc/sources/legacy_sample.doc"
        refused = client.post("/api/v1/documents", headers=auth("alice"), data={"collection": "formats"},
                              files={"file": (doc.name, doc.read_bytes(), "application/msword")})
        assert refused.status_code == 415 and ".doc" in refused.json()["detail"], refused.text
        for ext, job_id in jobs.items():
            job = wait_job(client, job_id, "alice")
            assert job["state"] == "completed" and not job["failures"], (ext, job, log.read_text()[-2000:])
            assert job["counts"].get("new") == 1, (ext, job)
    finally:
        proc.terminate()
        proc.wait(60)
        reap(tmp_path / "ph")
