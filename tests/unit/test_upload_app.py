"""The upload service's request handling in process (FastAPI's TestClient): tokens, completion retries, limits."""

from __future__ import annotations

import base64
import hashlib
import time

import jwt
import pytest
from fastapi.testclient import TestClient

from docingest.service.uploads import UploadError
from docingest.settings import DocingestSettings

pytestmark = pytest.mark.unit

SECRET = "unit-secret-of-at-least-32-bytes-0123456789"


def auth(user: str = "alice", **claims) -> dict[str, str]:
    claims = {"sub": user, "exp": int(time.time()) + 600, "collections": ["*"], **claims}
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


@pytest.fixture
def client(tmp_path):
    from docingest.service.app import create_app

    app = create_app(DocingestSettings(home=tmp_path, jwt={"secret": SECRET}, upload={"part_size": 1024}))
    app.state.jobs.close()  # no worker: jobs stay queued, nothing is ingested in a unit test
    app.state.jobs._closed = False
    with TestClient(app) as c:
        c.app_state = app.state
        yield c


def upload(client, data: bytes = b"# Title\n\nSome words here.\n") -> str:
    made = client.post("/api/v1/uploads", headers=auth(), json={"filename": "a.md", "size": len(data),
                                                                "collection": "kb"}).json()
    for n in range(1, made["parts"] + 1):
        part = data[(n - 1) * 1024: n * 1024]
        r = client.put(f"/api/v1/uploads/{made['upload_id']}/parts/{n}", content=part, headers={
            **auth(), "Content-MD5": base64.b64encode(hashlib.md5(part).digest()).decode()})
        assert r.status_code == 200, r.text
    return made["upload_id"]


def test_tokens_need_sub_and_exp(client):
    assert client.get("/api/v1/jobs").status_code == 401
    never_expires = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {never_expires}"}).status_code == 401
    assert client.get("/api/v1/jobs", headers=auth(exp=int(time.time()) - 5)).status_code == 401
    assert client.get("/api/v1/jobs", headers=auth()).status_code == 200


def test_a_full_queue_refuses_before_assembling_and_a_refused_job_is_started_on_retry(client, monkeypatch):
    jobs = client.app_state.jobs
    upload_id = upload(client)
    monkeypatch.setattr(jobs, "max_queue", 0)
    r = client.post(f"/api/v1/uploads/{upload_id}/complete", headers=auth())
    assert r.status_code == 503
    assert client.get(f"/api/v1/uploads/{upload_id}", headers=auth()).json()["completed"] is False
    monkeypatch.setattr(jobs, "max_queue", 1000)

    # The job is refused after assembly (e.g. shutdown began in between): the same call later starts it.
    real_submit = jobs.submit
    monkeypatch.setattr(jobs, "submit", lambda *a: (_ for _ in ()).throw(UploadError(503, "shutting down")))
    assert client.post(f"/api/v1/uploads/{upload_id}/complete", headers=auth()).status_code == 503
    assert client.get(f"/api/v1/uploads/{upload_id}", headers=auth()).json()["completed"] is True
    monkeypatch.setattr(jobs, "submit", real_submit)
    started = client.post(f"/api/v1/uploads/{upload_id}/complete", headers=auth())
    assert started.status_code == 200, started.text
    job_id = started.json()["job_id"]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth()).json()["state"] == "queued"
    again = client.post(f"/api/v1/uploads/{upload_id}/complete", headers=auth())
    assert again.status_code == 409  # now it has its job: never a second one


def test_a_chunked_part_larger_than_the_part_size_is_refused(client):
    made = client.post("/api/v1/uploads", headers=auth(), json={"filename": "a.md", "size": 1500,
                                                                "collection": "kb"}).json()

    def body():  # no Content-Length: chunked transfer encoding
        yield b"x" * 1000
        yield b"y" * 1000  # 2000 bytes > the 1024-byte part size

    r = client.put(f"/api/v1/uploads/{made['upload_id']}/parts/1", content=body(), headers={
        **auth(), "Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})
    assert r.status_code == 413


def test_anonymous_callers_learn_nothing_and_metrics_use_route_templates(client):
    assert client.post("/api/v1/uploads", json={"nonsense": True}).status_code == 401  # not 422: auth comes first
    assert client.get("/api/v1/uploads/abc").status_code == 401
    assert client.get("/metrics").status_code == 401
    upload_id = upload(client)
    assert client.get(f"/api/v1/uploads/{upload_id}", headers=auth()).status_code == 200
    metrics = client.get("/metrics", headers=auth()).text
    assert 'handler="/api/v1/uploads/{upload_id}"' in metrics  # the route template, never the raw path
    assert upload_id not in metrics


def test_a_websocket_hello_that_is_not_an_object_is_closed_not_a_traceback(client):
    from starlette.websockets import WebSocketDisconnect

    for hello in ("[]", "1", '"x"', "{not json"):
        with client.websocket_connect("/api/v1/ws/jobs") as ws:
            ws.send_text(hello)
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4400  # malformed


def test_a_deployment_jobs_outcome_comes_from_the_runs_persisted_result():
    """Deployment mode: a completed flow run's outcome for the job's document is read from its persisted
    IngestResult (the state's ``result()``), never from a UI artifact; an unreadable result says what to configure."""
    from docingest.datamodel import ChangeKind, DocumentOutcome, DocumentStatus, IngestResult, Stage
    from docingest.service.jobs import outcome_from_result

    class Completed:
        def __init__(self, result):
            self._result = result

        def result(self, raise_on_failure=True):
            if isinstance(self._result, Exception):
                raise self._result
            return self._result

    result = IngestResult(collection="desk", outcomes=[
        DocumentOutcome(source="file:///u/up1/a.md", path="up1/a.md", status=DocumentStatus.SUCCESS,
                        change=ChangeKind.NEW, chunks=3),
        DocumentOutcome(source="file:///u/up2/b.pdf", path="up2/b.pdf", status=DocumentStatus.FAILURE,
                        stage=Stage.PARSE, error="not a PDF")])
    assert outcome_from_result(Completed(result), "up1/a.md") == ("success", "new", None, 3, None)
    assert outcome_from_result(Completed(result), "up2/b.pdf") == ("failure", None, "parse", 0, "not a PDF")
    assert outcome_from_result(Completed(result), "up3/c.md")[2:] == (
        "run", 0, "the run reported no outcome for the document")
    status, _, stage, _, error = outcome_from_result(Completed(FileNotFoundError("/results/abc")), "up1/a.md")
    assert (status, stage) == ("failure", "result") and "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK" in error


def test_collections_and_priorities_are_grants(client):
    def create(collection: str, priority: str = "normal", **claims):
        return client.post("/api/v1/uploads", headers=auth(**claims), json={
            "filename": "a.md", "size": 10, "collection": collection, "priority": priority})

    assert create("kb").status_code == 201  # collections ["*"]
    nothing = create("kb", collections=None)  # a token without the claim writes nowhere
    assert nothing.status_code == 403 and nothing.json() == {"detail": "forbidden"}
    assert create("team-a-docs", collections=["team-a-*"]).status_code == 201
    other = create("handbook", collections=["team-a-*"])
    assert other.status_code == 403 and other.json() == {"detail": "forbidden"}  # nothing about the collection
    assert create("handbook", collections=["team-a-*"], read=["handbook"]).status_code == 403  # read is not write
    assert create("kb", priority="critical").status_code == 403  # default grant: normal only
    assert create("kb", priority="critical", priorities=["critical"]).status_code == 201
    files = {"file": ("a.md", b"# A\n\nText.\n", "text/markdown")}
    one = client.post("/api/v1/documents", headers=auth(collections=["team-a-*"]), files=files,
                      data={"collection": "handbook"})
    assert one.status_code == 403


def test_a_blank_sub_is_no_user(client):
    for sub in ("", "   "):
        assert client.get("/api/v1/jobs", headers=auth(sub)).status_code == 401


def test_health_says_only_up_or_down_without_a_token_and_starts_nothing(client, tmp_path, monkeypatch):
    from docingest.core.store.store import is_open
    from docingest.service.routes import health
    from docingest.settings import get_settings
    from docingest.targets import resolve_location

    monkeypatch.setenv("DOCINGEST_HOME", str(tmp_path))  # the process's settings are the app's, as in `serve`
    get_settings.cache_clear()
    # A fresh service: no Prefect API configured, no temporary one started (this test process may have one).
    monkeypatch.setattr(health, "prefect_started", lambda: False)
    asked = []
    monkeypatch.setattr(health, "check_prefect", lambda: asked.append("prefect"))
    try:
        anonymous = client.get("/health")
        assert anonymous.json() == {"ok": True}, anonymous.text
        detailed = client.get("/health", headers=auth()).json()
        assert detailed["storage"] is True and detailed["jobs_pending"] == 0 and detailed["prefect"] is None
        assert asked == []  # Prefect was not asked, so its temporary API was not started for a probe
        assert not is_open(resolve_location())  # and the embedded store was not opened
    finally:
        get_settings.cache_clear()


def test_bodies_are_bounded_while_streaming_and_errors_never_echo_the_input(client, monkeypatch):
    def chunked(total: int, piece: bytes = b"x" * 4096):
        sent = 0
        while sent < total:
            yield piece
            sent += len(piece)

    big_json = client.post("/api/v1/uploads", headers={**auth(), "Content-Type": "application/json"},
                           content=chunked(1024 * 1024))
    assert big_json.status_code == 413
    lying = client.post("/api/v1/uploads", headers={**auth(), "Content-Length": str(10 ** 9)}, content=b"{}")
    assert lying.status_code == 413
    secret = "s3cr3t-" + "v" * 2000
    invalid = client.post("/api/v1/uploads", headers=auth(), json={"filename": secret, "size": -1, "collection": 1})
    assert invalid.status_code == 422 and "s3cr3t" not in invalid.text and len(invalid.text) < 2000
    settings = client.app_state.service.settings

    def multipart(size: int):  # a form streamed without Content-Length: it is cut off once past the limit
        yield (b'--B\r\nContent-Disposition: form-data; name="collection"\r\n\r\nkb\r\n'
               b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.md"\r\n'
               b"Content-Type: text/markdown\r\n\r\n")
        yield from chunked(size, b"x" * (1 << 20))
        yield b"\r\n--B--\r\n"

    monkeypatch.setattr(settings.upload, "max_bytes", 1 << 20)
    form = client.post("/api/v1/documents", headers={**auth(), "Content-Type": "multipart/form-data; boundary=B"},
                       content=multipart(4 << 20))
    assert form.status_code == 413


def test_metric_labels_come_from_fixed_sets(client):
    for n in range(50):
        client.request(f"M{n}", f"/nowhere/{n}")
        client.get(f"/api/v1/uploads/{n:032x}")  # anonymous, a different path each time
    metrics = client.get("/metrics", headers=auth()).text
    lines = [line for line in metrics.splitlines() if line.startswith("docingest_service_http_requests_total{")]
    assert len(lines) <= 4, lines  # a few series, not one per method or path
    assert 'method="OTHER"' in metrics and "/nowhere" not in metrics and "M17" not in metrics


def test_a_websocket_with_a_bad_token_in_the_handshake_is_never_accepted(client):
    from starlette.websockets import WebSocketDisconnect

    bad = {"Authorization": "Bearer nonsense"}
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/api/v1/ws/jobs", headers=bad) as ws:
        ws.receive_json()
    assert refused.value.code == 4401
    with client.websocket_connect("/api/v1/ws/jobs", headers=auth()) as ws:
        ws.send_json({"subscribe": []})  # the handshake's token is enough
        ws.send_json({"ping": 1})


def test_search_needs_a_read_grant(client):
    body = {"collection": "handbook", "query": "badges"}
    assert client.post("/api/v1/search", json=body).status_code == 401
    assert client.post("/api/v1/search", headers=auth(collections=["team-*"]), json=body).status_code == 403
    missing = client.post("/api/v1/search", headers=auth(collections=[], read=["hand*"]), json=body)
    assert missing.status_code == 404 and missing.json() == {"detail": "collection not found"}
    assert client.post("/api/v1/search", headers=auth(), json={**body, "mode": "nonsense"}).status_code == 422


def test_a_one_request_upload_that_fails_leaves_nothing_behind(client, monkeypatch):
    jobs = client.app_state.jobs
    root = client.app_state.store.backend.root
    monkeypatch.setattr(jobs, "submit", lambda *a: (_ for _ in ()).throw(UploadError(503, "shutting down")))
    r = client.post("/api/v1/documents", headers=auth(), data={"collection": "kb"},
                    files={"file": ("a.md", b"# A\n\nSome words.\n", "text/markdown")})
    assert r.status_code == 503
    assert [p for p in root.rglob("*") if p.is_file()] == []  # no parts, metadata or document: nobody saw its id
    refused = client.post("/api/v1/documents", headers=auth(), data={"collection": "kb"},
                          files={"file": ("a.pdf", b"not a pdf at all", "application/pdf")})
    assert refused.status_code == 415
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_the_collections_claim_can_be_renamed_and_search_refuses_manifests_and_deployment_mode(tmp_path, client,
                                                                                              monkeypatch):
    from docingest.service.app import create_app

    app = create_app(DocingestSettings(home=tmp_path / "other", jwt={"secret": SECRET, "collections_claim": "groups"}))
    app.state.jobs.close()
    with TestClient(app) as renamed:
        body = {"filename": "a.md", "size": 10, "collection": "kb"}
        assert renamed.post("/api/v1/uploads", headers=auth(collections=None, groups=["kb"]), json=body
                            ).status_code == 201
        assert renamed.post("/api/v1/uploads", headers=auth(), json=body).status_code == 403  # `collections` ignored
    manifest = client.post("/api/v1/search", headers=auth(), json={"collection": "kb__manifest", "query": "x"})
    assert manifest.status_code == 404
    monkeypatch.setattr(client.app_state.jobs, "deployment", "ingest-documents/local")
    held = client.post("/api/v1/search", headers=auth(), json={"collection": "kb", "query": "x"})
    assert held.status_code == 503 and "DOCINGEST_QDRANT_URL" in held.json()["detail"]


def test_bucket_notifications_reach_the_watches_of_their_bucket_and_prefix(tmp_path, monkeypatch):
    """MinIO's webhook body; the token must grant writing to every collection reached; other objects are ignored."""
    from urllib.parse import quote

    from docingest.service.app import create_app
    from docingest.service.watches import Watches

    monkeypatch.setattr(Watches, "start", lambda self, api_ready: None)  # no flow runs in a unit test
    app = create_app(DocingestSettings(home=tmp_path, jwt={"secret": SECRET}),
                     watch=["s3://bucket/docs=kb", f"{tmp_path}=notes"])
    app.state.jobs.close()
    live = {w.live.collection: w.live for w in app.state.service.watches.watched}

    def event(name: str, bucket: str, key: str) -> dict:
        return {"EventName": name, "Key": f"{bucket}/{key}", "Records": [
            {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": quote(key), "size": 1}}}]}

    with TestClient(app) as client:
        put = event("s3:ObjectCreated:Put", "bucket", "docs/a b.md")
        assert client.post("/api/v1/notifications/s3", json=put).status_code == 401
        assert client.post("/api/v1/notifications/s3", json=put, headers=auth(collections=["notes"])).status_code == 403
        assert not live["kb"].batcher.pending()  # refused: nothing queued
        answer = client.post("/api/v1/notifications/s3", json=put, headers=auth(collections=["kb"]))
        assert (answer.status_code, answer.json()) == (202, {"queued": 1, "ignored": 0, "collections": ["kb"]})
        for ignored in (event("s3:ObjectCreated:Put", "bucket", "elsewhere/a.md"),
                        event("s3:ObjectCreated:Put", "other", "docs/a.md"),
                        event("s3:ObjectAccessed:Get", "bucket", "docs/b.md")):
            answer = client.post("/api/v1/notifications/s3", json=ignored, headers=auth(collections=["kb"]))
            assert (answer.status_code, answer.json()["ignored"]) == (202, 1)
        removed = event("s3:ObjectRemoved:Delete", "bucket", "docs/old.md")
        assert client.post("/api/v1/notifications/s3", json=removed, headers=auth()).json()["queued"] == 1
        assert client.post("/api/v1/notifications/s3", json={"Records": "x"}, headers=auth()).status_code == 422
        watches = client.get("/api/v1/watches", headers=auth(collections=["kb"])).json()["watches"]
        assert [(w["collection"], w["state"]) for w in watches] == [("kb", "starting")]
    batch = live["kb"].batcher.take(timeout=1)
    assert batch is not None and batch.patterns == {"a b.md", "old.md"}
    assert not live["notes"].batcher.pending()


def test_serve_watch_is_refused_where_it_cannot_work(tmp_path):
    from docingest.exceptions import ConfigurationError
    from docingest.service.app import create_app

    settings = DocingestSettings(home=tmp_path, jwt={"secret": SECRET})
    with pytest.raises(ConfigurationError, match="not a folder"):
        create_app(settings, watch=[f"{tmp_path / 'missing'}=kb"])
    with pytest.raises(ConfigurationError, match="collection twice"):
        create_app(settings, watch=[f"{tmp_path}=kb", "s3://b/p=kb"])
    with pytest.raises(ConfigurationError, match="workers own the embedded store"):
        create_app(DocingestSettings(home=tmp_path, jwt={"secret": SECRET}, upload={"deployment": "ingest/x"}),
                   watch=[f"{tmp_path}=kb"])
