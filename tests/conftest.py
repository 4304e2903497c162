"""Shared fixtures: offline environment, a session Prefect test server, the store on either engine in a temp folder
(``backend``, ``store``, ``store_factory``) and the store a run wrote (``written_store``), the corpus and copies of
it, the repository's paths.

Tests take what they need as fixtures and import nothing from a conftest (tests/unit/test_test_imports.py); the
integration tests' servers and helpers are fixtures of tests/integration/conftest.py."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

# A test run started in the background (`bash .ci/run &`, a CI runner, nohup) inherits SIGINT ignored, and exec'd
# children keep an ignored signal: every `prefect worker start` a test starts would then never stop on SIGTERM (Prefect
# turns SIGTERM into a SIGINT to itself, which an ignored SIGINT swallows; docs/operations.md, "Signals"). Children
# get the default disposition from here on; test_worker_that_ignores_sigint_... shows the bug itself.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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
BIN = Path(sys.executable).parent
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

    # A fresh database: 13 s until healthy on an idle 2-core machine, 23 s in a loaded suite run; 120 s is over 5x.
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


@pytest.fixture(scope="session")
def corpus_copy(corpus, tmp_path_factory):
    """``corpus_copy(rel_paths, dest=None) -> Path``: the named corpus files copied (flat) into ``dest`` (a fresh
    temporary folder when not given), so a test can change them freely. Session-scoped, so module fixtures use it."""

    def copy(rel_paths: list[str], dest: Path | None = None) -> Path:
        dest = dest if dest is not None else tmp_path_factory.mktemp("corpus")
        dest.mkdir(parents=True, exist_ok=True)
        for rel in rel_paths:
            shutil.copy2(corpus / rel, dest / Path(rel).name)
        return dest

    return copy


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder."""
    return REPO


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """The folder of this interpreter's console scripts (``prefect``, ``docingest``)."""
    return BIN


# -- the store on both engines ----------------------------------------------------------------------------------------

ENGINES = ("edge", "qdrant-client")  # Qdrant Edge in the process (the default), qdrant-client's local mode (a server)


@pytest.fixture(params=ENGINES, ids=[f"engine={e}" for e in ENGINES])
def backend(request) -> str:
    """The store engine of this test: the test runs once on each (``DOCINGEST_QDRANT_ENGINE`` values)."""
    return request.param


@pytest.fixture
def store_factory(tmp_path):
    """``store_factory(engine, path=None, **location) -> QdrantStore``: a store opened in this test's folder
    (``store-<engine>`` unless ``path`` is given), with more ``QdrantLocation`` fields as keywords; every store the
    test opened is closed after it."""
    from docingest.core.store import QdrantLocation, QdrantStore, close_backends

    def open_store(engine: str, path: Path | None = None, **location) -> QdrantStore:
        return QdrantStore(QdrantLocation(path=path or tmp_path / f"store-{engine}", engine=engine, **location))

    yield open_store
    close_backends()


@pytest.fixture
def written_store(request, store_factory):
    """``written_store(path=None, engine="edge") -> QdrantStore``: the embedded store that a flow, the CLI or the
    service wrote, opened to read it: ``<home>/qdrant`` of the test's ``home`` fixture (its DOCINGEST_HOME, also after
    a ``monkeypatch.undo()``) unless ``path`` is given. Closed after the test with every store ``store_factory``
    opened."""

    def open_written(path: Path | None = None, engine: str = "edge"):
        if path is None:
            assert "home" in request.fixturenames, "written_store() reads <home>/qdrant: take the `home` fixture"
            path = request.getfixturevalue("home") / "qdrant"
        return store_factory(engine, path=path)

    return open_written


@pytest.fixture
def store(backend, store_factory):
    """An opened, empty store on ``backend`` in this test's folder, closed after the test. ``DOCINGEST_QDRANT_ENGINE``
    is ``backend`` meanwhile, so ``open_store(QdrantTarget(path=store.location.path))`` (export, search, migrate)
    opens this very store."""
    from docingest.settings import get_settings

    before = os.environ.get("DOCINGEST_QDRANT_ENGINE")
    os.environ["DOCINGEST_QDRANT_ENGINE"] = backend
    get_settings.cache_clear()
    try:
        yield store_factory(backend)
    finally:
        if before is None:
            os.environ.pop("DOCINGEST_QDRANT_ENGINE", None)
        else:
            os.environ["DOCINGEST_QDRANT_ENGINE"] = before
        get_settings.cache_clear()


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


_PDF_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def write_encrypted_pdf(path: Path, text: str, password: str = "s3cret") -> Path:
    """A one-page PDF whose content is encrypted with a user password (PDF standard security handler, revision 2,
    RC4 40-bit): no reader opens it without the password. No PDF library here writes encrypted files."""
    import hashlib

    pw = (password.encode() + _PDF_PAD)[:32]
    owner = _rc4(hashlib.md5(pw).digest()[:5], pw)  # owner password = user password
    permissions = (-4).to_bytes(4, "little", signed=True)
    file_id = hashlib.md5(text.encode()).digest()
    key = hashlib.md5(pw + owner + permissions + file_id).digest()[:5]
    content = _rc4(hashlib.md5(key + (4).to_bytes(3, "little") + b"\0\0").digest()[:10],
                   f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode())
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>" % (owner.hex().encode(),
                                                                     _rc4(key, _PDF_PAD).hex().encode()),
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += (b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 6 0 R /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n"
            % (len(objects) + 1, file_id.hex().encode(), file_id.hex().encode(), xref))
    path.write_bytes(bytes(out))
    return path


@pytest.fixture
def make_encrypted_pdf():
    """``make_encrypted_pdf(path, text, password="s3cret")`` writes a password-protected one-page PDF."""
    return write_encrypted_pdf


@pytest.fixture
def encrypted_pdf(tmp_path) -> Path:
    """A password-protected one-page PDF (password ``s3cret``) in the test's folder."""
    return write_encrypted_pdf(tmp_path / "salaries.pdf", "Quarterly salaries are confidential")
