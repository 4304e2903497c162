"""Shared fixtures: offline environment, a session Prefect test server, the embedded store in a temp folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Offline and quiet, before anything imports Prefect, transformers or Docling.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Persisted task results (the parse cache) of this session only: never reuse a developer's or an earlier run's.
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = tempfile.mkdtemp(prefix="docingest-test-results-")
# Each pytest-xdist worker its own Prefect home: the temporary API servers that CLI subprocesses start keep their
# database there, and two workers migrating one SQLite file at once would collide.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"docingest-test-prefect-{os.environ['PYTEST_XDIST_WORKER']}-")
for var in ("DOCINGEST_QDRANT_URL", "DOCINGEST_QDRANT_PATH", "DOCINGEST_EMBED_MODEL", "DOCINGEST_HOME"):
    os.environ.pop(var, None)

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "docling-testdata"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared Docling test corpus (../shared/corpus/docling-testdata), read in place, never copied in."""
    assert CORPUS.is_dir(), f"shared corpus missing at {CORPUS}: tests need ../shared beside the repository"
    return CORPUS


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API for the whole session (real server, SQLite, loopback)."""
    from prefect.logging.configuration import setup_logging
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        # Bind Prefect's console handler to the session's stderr now, not to the short-lived stream of the first
        # CliRunner invocation (which closes it and breaks logging for every later test).
        setup_logging(incremental=False)
        yield


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """Fresh DOCINGEST_HOME (so the embedded store is per test) and fresh settings."""
    from docingest.core.store import close_backends
    from docingest.settings import get_settings

    monkeypatch.setenv("DOCINGEST_HOME", str(tmp_path / ".docingest"))
    get_settings.cache_clear()
    yield tmp_path / ".docingest"
    close_backends()
    get_settings.cache_clear()


def copy_corpus_files(corpus: Path, dest: Path, rel_paths: list[str]) -> Path:
    """Copy named corpus files into a test folder (flat), so tests can change them freely."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in rel_paths:
        shutil.copy2(corpus / rel, dest / Path(rel).name)
    return dest


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the module's tests."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch, home):
    """The environment that points docingest at the loopback S3 server, and a minio client for it."""
    from minio import Minio

    from docingest.settings import get_settings

    monkeypatch.setenv("DOCINGEST_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    get_settings.cache_clear()
    return Minio(s3_endpoint.removeprefix("http://"), access_key="testing", secret_key="testing-secret", secure=False)
