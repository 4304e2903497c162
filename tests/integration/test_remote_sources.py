"""S3 (a moto server on loopback) and git (a bare repository on disk) sources through the real flow."""

from __future__ import annotations

import socket
import subprocess
from io import BytesIO
from pathlib import Path

import pytest

from docingest.core.sources import open_source
from docingest.exceptions import ConfigurationError
from docingest.flows.ingest import ingest_documents
from docingest.options import IngestOptions, SourceOptions
from docingest.search import search

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, home):
    from minio import Minio

    from docingest.settings import get_settings

    monkeypatch.setenv("DOCINGEST_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    get_settings.cache_clear()
    client = Minio(s3_endpoint.removeprefix("http://"), access_key="testing", secret_key="testing-secret",
                   secure=False)
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


def test_s3_configuration_errors(s3, s3_endpoint, monkeypatch):
    from docingest.settings import get_settings

    with pytest.raises(ConfigurationError, match="bucket not found: 'nope'"):
        open_source("s3://nope/docs")
    monkeypatch.setenv("DOCINGEST_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match="unreachable"):
        open_source("s3://handbook/docs")


def git(*args, cwd=None):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path) -> tuple[str, Path]:
    origin = tmp_path / "origin.git"
    git("init", "--bare", "-q", "-b", "main", str(origin))
    work = tmp_path / "work"
    git("clone", "-q", str(origin), str(work))
    git("config", "user.email", "t@example.com", cwd=work)
    git("config", "user.name", "T", cwd=work)
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


def test_git_folder_sync_by_blob_sha(prefect_server, home, repo):
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


def test_saved_source_blocks_through_the_cli(prefect_server, s3, s3_endpoint, repo):
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

    both = runner.invoke(app, ["ingest", "./x", "--source-block", "approved-docs", "-c", "blk"])
    assert both.exit_code == 2 and "either SOURCE or --source-block" in both.stderr
    missing = runner.invoke(app, ["ingest", "--source-block", "nope", "-c", "blk"])
    assert missing.exit_code == 2 and "no docingest source block named 'nope'" in missing.stderr


def test_s3_download_errors_are_retried_then_fail_the_document_alone(prefect_server, s3, monkeypatch):
    from minio import Minio
    from urllib3.exceptions import ProtocolError

    from docingest.core.sources import s3 as s3_module

    monkeypatch.setattr(s3_module, "DOWNLOAD_BACKOFF_S", 0.01)
    put(s3, "flaky/a.md", "# A\n\nSurvives two dropped connections.\n")
    put(s3, "flaky/b.md", "# B\n\nNever arrives.\n")
    real = Minio.fget_object
    calls = {"a.md": 0, "b.md": 0}

    def flaky(self, bucket, key, path, *args, **kwargs):
        name = key.rsplit("/", 1)[-1]
        calls[name] += 1
        if name == "b.md" or calls[name] <= 2:
            raise ProtocolError("Connection aborted.")
        return real(self, bucket, key, path, *args, **kwargs)

    monkeypatch.setattr(Minio, "fget_object", flaky)
    result = ingest_documents(source="s3://handbook/flaky", collection="flaky",
                              options=IngestOptions.model_validate({"parse": {"isolation": "none"}}))
    assert calls == {"a.md": 3, "b.md": 3}
    assert result.documents.failed == 1 and result.chunks.upserted == 1
    failure = result.failures[0]
    assert failure.source == "s3://handbook/flaky/b.md" and failure.stage == "read"
    assert "after 3 attempts" in failure.error
