"""S3 (a moto server on loopback) and git (a bare repository on disk) sources through the real flow."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest

from docingest.core.sources import open_source
from docingest.exceptions import ConfigurationError
from docingest.flows.ingest import ingest_documents
from docingest.options import IngestOptions, SourceOptions
from docingest.retrieval import search

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def s3(s3_env):
    client = s3_env
    if not client.bucket_exists("handbook"):
        client.make_bucket("handbook")
    return client


def put(client, key: str, text: str) -> None:
    data = text.encode()
    client.put_object("handbook", key, BytesIO(data), len(data))


def test_s3_bucket_prefix_sync(prefect_server, s3):
    put(s3, "docs/keys.md", "# Keys\n\nRotate the signing keys with the vault CLI every ninety days.\n")
    put(s3, "docs/lunch.md", "# Lunch\n\nThe cafeteria serves soup on Fridays.\n")
    put(s3, "other/secret.md", "# Elsewhere\n\nNot under the prefix.\n")

    first = ingest_documents(source="s3://handbook/docs", collection="s3kb")
    assert (first.documents.seen, first.documents.new, first.documents.failed) == (2, 2, 0)
    hit = search("how often are keys rotated", "s3kb", limit=1)[0]
    assert hit.path == "keys.md" and hit.source == "s3://handbook/docs/keys.md"

    again = ingest_documents(source="s3://handbook/docs", collection="s3kb")
    assert again.documents.unchanged == 2 and again.chunks.embedded == 0  # ETag says unchanged, nothing downloaded

    put(s3, "docs/keys.md", "# Keys\n\nKeys are now rotated automatically.\n")
    s3.remove_object("handbook", "docs/lunch.md")
    synced = ingest_documents(source="s3://handbook/docs", collection="s3kb",
                              options=IngestOptions.model_validate({"mode": "full"}))
    d = synced.documents
    assert (d.changed, d.deleted, d.unchanged) == (1, 1, 0)
    texts = [h.text for h in search("keys", "s3kb", limit=10)]
    assert any("automatically" in t for t in texts) and not any("ninety" in t or "soup" in t for t in texts)


def test_s3_configuration_errors(s3, s3_endpoint, monkeypatch, free_port):
    from docingest.settings import get_settings

    with pytest.raises(ConfigurationError, match="bucket not found: 'nope'"):
        open_source("s3://nope/docs")
    monkeypatch.setenv("DOCINGEST_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match="unreachable"):
        open_source("s3://handbook/docs")


@pytest.fixture
def repo(tmp_path, git, git_origin) -> tuple[str, Path]:
    origin, work = git_origin(tmp_path)
    approved = work / "30-Aprovados"
    approved.mkdir()
    (approved / "policy.md").write_text("# Travel policy\n\nTrain travel is preferred for trips under five hours.\n")
    (approved / "guide.md").write_text("# Style guide\n\nWrite short sentences.\n")
    (work / "drafts.md").write_text("# Draft\n\nNot approved yet.\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "v1", cwd=work)
    git("tag", "v1", cwd=work)
    git("push", "-q", "origin", "main", "--tags", cwd=work)
    return origin.as_uri(), work


def test_git_folder_sync_by_blob_sha(prefect_server, home, repo, git):
    url, work = repo
    opts = IngestOptions(source=SourceOptions(git_ref="main", git_path="30-Aprovados"))
    first = ingest_documents(source=url, collection="gitkb", options=opts)
    assert (first.documents.seen, first.documents.new, first.documents.failed) == (2, 2, 0)
    hit = search("is the train preferred", "gitkb", limit=1)[0]
    assert hit.path == "policy.md" and hit.source == f"git+{url}@main:30-Aprovados/policy.md"

    (work / "30-Aprovados" / "policy.md").write_text("# Travel policy\n\nBook all travel through the portal.\n")
    git("commit", "-q", "-am", "v2", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    second = ingest_documents(source=url, collection="gitkb", options=opts)
    assert (second.documents.changed, second.documents.unchanged) == (1, 1)
    assert all("five hours" not in h.text for h in search("train travel", "gitkb", limit=5))

    # Delete one document, rename another, and change only files outside the folder: a full sync removes the deleted
    # and the renamed-away paths, adds the new path, and the outside change is invisible.
    git("rm", "-q", "30-Aprovados/guide.md", cwd=work)
    git("mv", "30-Aprovados/policy.md", "30-Aprovados/travel-policy.md", cwd=work)
    (work / "drafts.md").write_text("# Draft\n\nStill not approved.\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "v3", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    third = ingest_documents(source=url, collection="gitkb", options=IngestOptions(
        source=SourceOptions(git_ref="main", git_path="30-Aprovados"), mode="full", max_delete_ratio=1.0))
    d = third.documents
    assert (d.seen, d.new, d.changed, d.unchanged, d.deleted) == (1, 1, 0, 0, 2)
    hits = search("book travel through the portal", "gitkb", limit=5)
    assert {h.path for h in hits} == {"travel-policy.md"}
    (work / "drafts.md").write_text("# Draft\n\nApproved soon.\n")  # a commit that only touches the outside
    git("commit", "-q", "-am", "v4", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    outside = ingest_documents(source=url, collection="gitkb", options=opts)
    assert outside.documents.unchanged == 1 and outside.chunks.embedded == 0

    pinned = ingest_documents(source=url, collection="gitkb-v1",
                              options=IngestOptions(source=SourceOptions(git_ref="v1", git_path="30-Aprovados")))
    assert pinned.documents.new == 2
    assert "five hours" in search("train travel", "gitkb-v1", limit=1)[0].text


def test_git_configuration_errors(home, repo):
    url, _ = repo
    with pytest.raises(ConfigurationError, match="unknown ref 'nope'"):
        open_source(url, SourceOptions(git_ref="nope"))
    with pytest.raises(ConfigurationError, match="path 'missing' not found"):
        open_source(url, SourceOptions(git_ref="main", git_path="missing"))
    with pytest.raises(ConfigurationError, match="cannot fetch"):
        open_source("file:///definitely/not/a/repo.git")


def test_saved_source_blocks_through_the_cli(prefect_server, s3, s3_endpoint, repo, written_store):
    import json

    from typer.testing import CliRunner

    from docingest.blocks import GitRepositorySource, S3BucketSource, S3Credentials
    from docingest.cli import app

    url, _ = repo
    GitRepositorySource(url=url, ref="main", path="30-Aprovados", token="glpat-never-shown").save(
        "approved-docs", overwrite=True)
    put(s3, "blocks/a.md", "# A\n\nStored in a bucket reached through a block.\n")
    S3BucketSource(bucket="handbook", prefix="blocks", credentials=S3Credentials(
        endpoint=s3_endpoint, access_key="testing", secret_key="testing-secret")).save("bucket-docs", overwrite=True)

    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "--source-block", "approved-docs", "-c", "blk", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["documents"]["new"] == 2
    assert "glpat-never-shown" not in result.output

    result = runner.invoke(app, ["ingest", "--source-block", "docingest-s3-bucket-source/bucket-docs", "-c", "blk3",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"]["new"] == 1

    from docingest.blocks import QdrantCollection, QdrantConnection

    elsewhere = repo[1].parent / "block-qdrant"
    QdrantCollection(collection_name="approved", connection=QdrantConnection(path=str(elsewhere))).save(
        "approved-kb", overwrite=True)
    result = runner.invoke(app, ["ingest", "--source-block", "approved-docs", "--collection-block", "approved-kb",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["collection"] == "approved"
    assert written_store(elsewhere).count("approved") > 0

    none = runner.invoke(app, ["ingest", "--source-block", "approved-docs"])
    assert none.exit_code == 2 and "give --collection or --collection-block" in none.stderr
    wrong = runner.invoke(app, ["ingest", "--source-block", "approved-docs", "--collection-block", "nope"])
    assert wrong.exit_code == 2 and "no Docingest Qdrant Collection block named 'nope'" in wrong.stderr

    both = runner.invoke(app, ["ingest", "./x", "--source-block", "approved-docs", "-c", "blk"])
    assert both.exit_code == 2 and "either SOURCE or --source-block" in both.stderr
    missing = runner.invoke(app, ["ingest", "--source-block", "nope", "-c", "blk"])
    assert missing.exit_code == 2 and "no docingest source block named 'nope'" in missing.stderr


def test_s3_download_errors_are_retried_by_the_client_then_fail_the_document_alone(prefect_server, s3, monkeypatch):
    """Dropped connections are retried by the S3 client's own retry configuration (urllib3 under minio): the fault
    is injected below urllib3's retry logic, so what retries is the configured ``Retry``, not docingest's code."""
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.exceptions import ProtocolError

    from docingest.core.sources import s3 as s3_module
    from docingest.settings import get_settings

    monkeypatch.setattr(s3_module, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setenv("DOCINGEST_S3_ATTEMPTS", "3")
    get_settings.cache_clear()
    put(s3, "flaky/a.md", "# A\n\nSurvives two dropped connections.\n")
    put(s3, "flaky/b.md", "# B\n\nNever arrives.\n")
    real = HTTPConnectionPool._make_request
    calls = {"a.md": 0, "b.md": 0}

    def flaky(self, conn, method, url, *args, **kwargs):
        name = url.split("?", 1)[0].rsplit("/", 1)[-1]
        if method == "GET" and name in calls:
            calls[name] += 1
            if name == "b.md" or calls[name] <= 2:
                raise ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
        return real(self, conn, method, url, *args, **kwargs)

    monkeypatch.setattr(HTTPConnectionPool, "_make_request", flaky)
    result = ingest_documents(source="s3://handbook/flaky", collection="flaky",
                              options=IngestOptions.model_validate({"parse": {"isolation": "none"}}))
    assert calls == {"a.md": 3, "b.md": 3}
    assert result.documents.failed == 1 and result.chunks.upserted == 1
    failure = result.failures[0]
    assert failure.source == "s3://handbook/flaky/b.md" and failure.stage == "read"
    assert "after 3 attempts" in failure.error and "Connection aborted" in failure.error


def test_wrong_s3_credentials_are_one_line_exit_2(tmp_path, home, monkeypatch, authenticating_s3):
    """A moto server that checks signatures: the right keys list the bucket; a wrong secret or an unknown key is a
    configuration error (exit 2, one line), never a per-document failure or a traceback."""
    from minio import Minio
    from typer.testing import CliRunner

    from docingest.cli import app
    from docingest.core.sources.s3 import S3Source

    with authenticating_s3(tmp_path / "moto.log") as server:
        client = Minio(server.endpoint.removeprefix("http://"), access_key=server.access_key,
                       secret_key=server.secret_key, secure=False)
        client.make_bucket("locked")
        client.put_object("locked", "docs/a.md", BytesIO(b"# A\n\nText.\n"), 11)
        ok = S3Source("s3://locked/docs", endpoint=server.endpoint, access_key=server.access_key,
                      secret_key=server.secret_key)
        assert [d.path for d in ok.iter_documents()] == ["a.md"]
        with pytest.raises(ConfigurationError, match=r"access denied for bucket 'locked' \(SignatureDoesNotMatch\)"):
            S3Source("s3://locked/docs", endpoint=server.endpoint, access_key=server.access_key, secret_key="wrong")
        with pytest.raises(ConfigurationError, match=r"\(InvalidAccessKeyId\): check the credentials"):
            S3Source("s3://locked/docs", endpoint=server.endpoint, access_key="AKIANOBODY", secret_key="x")

        monkeypatch.setenv("DOCINGEST_S3_ENDPOINT", server.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        from docingest.settings import get_settings

        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["ingest", "s3://locked/docs", "-c", "locked"])
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines() == [
            f"error: S3 {server.endpoint.removeprefix('http://')}: access denied for bucket 'locked' "
            "(SignatureDoesNotMatch): check the credentials"]
        assert "not-the-secret" not in result.output


def test_git_token_over_http(prefect_server, home, repo, monkeypatch, tmp_path, git_http_server, written_store):
    """git smart HTTP on loopback that accepts only ``oauth2:<token>`` basic auth (GitLab's scheme for access
    tokens): the token comes from DOCINGEST_GIT_TOKEN, travels as a header (never in argv, URLs or results), and a
    missing or wrong token is a one-line configuration error."""
    from docingest.settings import get_settings

    url, _ = repo
    origin = Path(url.removeprefix("file://"))
    with git_http_server(origin.parent, token="glpat-loopback-123") as server:
        http_url = f"{server.url}/{origin.name}"
        opts = IngestOptions(source=SourceOptions(git_ref="main", git_path="30-Aprovados"))
        with pytest.raises(ConfigurationError, match="needs a token"):
            open_source(http_url, opts.source)
        monkeypatch.setenv("DOCINGEST_GIT_TOKEN", "glpat-wrong")
        get_settings.cache_clear()
        with pytest.raises(ConfigurationError, match="token was refused") as refused:
            open_source(http_url, opts.source)
        assert "glpat" not in str(refused.value)

        monkeypatch.setenv("DOCINGEST_GIT_TOKEN", "glpat-loopback-123")
        get_settings.cache_clear()
        result = ingest_documents(source=http_url, collection="gitlab", options=opts)
        assert (result.documents.new, result.documents.failed) == (2, 0)
        assert any(r.startswith("POST /origin.git/git-upload-pack auth=True") for r in server.requests)
        hit = search("is the train preferred", "gitlab", limit=1)[0]
        assert hit.source == f"git+{http_url}@main:30-Aprovados/policy.md"
        assert "glpat" not in result.model_dump_json()
        store = written_store()
        for name in ("gitlab__v1", "gitlab__v1__manifest"):  # every payload, chunks and manifest
            payloads = [p["payload"] for p in store.points(name)]
            assert payloads and all("glpat" not in str(p) for p in payloads)


def test_shared_result_storage_on_s3(prefect_server, s3, s3_endpoint, home, monkeypatch, tmp_path, task_states):
    """Two 'machines' (separate Qdrant folders and local result folders) share one S3 result storage block: the
    second one finds every parse-and-chunk result cached by the first and parses nothing."""
    from docingest.blocks import S3Credentials, S3ResultStorage
    from docingest.core.store import close_backends
    from docingest.settings import get_settings

    if not s3.bucket_exists("prefect-results"):
        s3.make_bucket("prefect-results")
    S3ResultStorage(bucket="prefect-results", basepath="cache", credentials=S3Credentials(
        endpoint=s3_endpoint, access_key="testing", secret_key="testing-secret")).save("shared", overwrite=True)
    put(s3, "shared/one.md", "# One\n\nThe first shared document.\n")
    put(s3, "shared/two.md", "# Two\n\nThe second shared document.\n")

    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "machine-a-results"))
    first = ingest_documents(source="s3://handbook/shared", collection="shared", result_storage="shared")
    assert first.documents.new == 2 and task_states(first.flow_run_id, "parse-and-chunk") == ["Completed"] * 2
    stored = [o.object_name for o in s3.list_objects("prefect-results", prefix="cache/", recursive=True)]
    assert len(stored) == 2 and all(name.startswith("cache/docingest-prepare-") for name in stored)

    close_backends()  # machine B: its own Qdrant, its own (empty) local result folder, the same shared block
    monkeypatch.setenv("DOCINGEST_HOME", str(tmp_path / "machine-b"))
    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "machine-b-results"))
    monkeypatch.setenv("DOCINGEST_RESULT_STORAGE", "docingest-s3-result-storage/shared")
    get_settings.cache_clear()
    second = ingest_documents(source="s3://handbook/shared", collection="shared")
    assert second.documents.new == 2 and second.chunks.upserted == first.chunks.upserted
    assert task_states(second.flow_run_id, "parse-and-chunk") == ["Cached"] * 2
    assert search("first shared", "shared", limit=1)[0].path == "one.md"

    with pytest.raises(ConfigurationError, match="no Docingest S3 Result Storage block named 'nope'"):
        ingest_documents(source="s3://handbook/shared", collection="shared", result_storage="nope")


def test_s3_endpoint_stopped_mid_run_and_restarted_loses_nothing(prefect_server, home, monkeypatch, free_port):
    """The S3 server goes down at the first download and comes back 0.8 s later, inside the retry window (the minio
    client's connection retries, then ours: DOCINGEST_S3_ATTEMPTS, 5 by default, 0 + 1 + 2 + 4 s apart, a 7 s window,
    over 8x the outage): every document is ingested, none failed."""
    import threading

    from minio import Minio
    from moto.server import ThreadedMotoServer

    from docingest.settings import get_settings

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("DOCINGEST_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("DOCINGEST_S3_ATTEMPTS", "5")  # the 7 s window, whatever the default becomes
    get_settings.cache_clear()
    client = Minio(f"127.0.0.1:{port}", access_key="testing", secret_key="testing-secret", secure=False)
    client.make_bucket("outage")
    for i in range(4):
        body = f"# Note {i}\n\nOutage drill note number {i}.\n".encode()
        client.put_object("outage", f"notes/n{i}.md", BytesIO(body), len(body))

    real = Minio.fget_object
    state = {"down": False, "calls_while_down": 0}
    restarted = threading.Event()

    def restart():
        nonlocal server
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)  # moto keeps its state
        server.start()
        restarted.set()

    def outage(self, *args, **kwargs):
        if not state["down"]:
            state["down"] = True
            server.stop()
            threading.Timer(0.8, restart).start()
        if not restarted.is_set():
            state["calls_while_down"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Minio, "fget_object", outage)
    try:
        result = ingest_documents(source="s3://outage/notes", collection="outage",
                                  options=IngestOptions.model_validate({"parse": {"isolation": "none"}}))
    finally:
        restarted.wait(10)
        server.stop()
    assert restarted.is_set() and state["calls_while_down"] >= 1  # downloads really started during the outage
    assert (result.documents.new, result.documents.failed) == (4, 0)
    assert {h.path for h in search("outage drill note", "outage", limit=10)} == {f"n{i}.md" for i in range(4)}
