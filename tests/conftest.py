"""Shared fixtures: offline environment, a session Prefect test server, the embedded store in a temp folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


# -- a Prefect server and its workers (tests/integration) ----------------------------------------------------------


class Stack:
    """A `prefect server start` on a loopback port (SQLite) and the processes a test starts beside it (workers, the
    upload service), all in this test's folder, with the environment they share."""

    def __init__(self, tmp: Path) -> None:
        from support import free_port, prefect_home  # tests/integration/support.py

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

    def deploy_local(self) -> None:
        """The pools, queues and automations (deployments/setup_pools.py) and prefect.yaml's `local` deployment."""
        pools = self.run(sys.executable, "deployments/setup_pools.py", "local-pool")
        assert pools.returncode == 0, pools.output
        deploy = self.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "local")
        assert deploy.returncode == 0, deploy.output

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    # -- the processes of a worker's flow runs ---------------------------------------------------------------------

    @staticmethod
    def _procs() -> dict[int, tuple[int, str, int]]:
        """pid -> (parent, state, session) of every process."""
        procs = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    raw = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = raw[raw.rindex(")") + 2:].split()
                procs[int(entry)] = (int(fields[1]), fields[0], int(fields[3]))
        return procs

    @classmethod
    def tree(cls, root: int) -> set[int]:
        """``root``'s running descendants, orphans included: each flow-run process has a session of its own (Prefect's
        runner starts it with one), which its fork server and parse workers keep."""
        procs = {p: v for p, v in cls._procs().items() if v[1] != "Z"}
        children = {p for p, (ppid, _, _) in procs.items() if ppid == root}
        sessions = {procs[p][2] for p in children} - {procs.get(root, (0, "", 0))[2]}
        return children | {p for p, (_, _, sid) in procs.items() if sid in sessions}

    @staticmethod
    def running(pid: int) -> bool:
        """Alive and not a zombie (a zombie holds no file, pipe or memory: only a pid until it is reaped)."""
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    @classmethod
    def report(cls, pid: int) -> str:
        """Every process of ``pid``'s tree (children by parent, orphans by session) with its state, command and open
        pipes, and each one's Python stacks where py-spy is installed (a test extra): what a hung worker waits on."""
        procs = cls._procs()
        tree, sessions = {pid}, {pid}
        for _ in range(8):  # children, grandchildren, ... and everything in their sessions
            tree |= {p for p, (ppid, _, sid) in procs.items() if ppid in tree or sid in sessions}
            sessions |= {procs[p][2] for p in tree if p in procs}
        lines, spy = [], shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
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

    def wait_for_line(self, name: str, text: str, proc: subprocess.Popen, limit_s: float = 120) -> None:
        deadline = time.monotonic() + limit_s  # a worker logs "started!" ~5 s after its start here
        while text not in self.log(name):
            assert proc.poll() is None and time.monotonic() < deadline, self.log(name)
            time.sleep(0.2)

    def store_snapshot(self, collection: str) -> dict:
        """The embedded store under the stack's DOCINGEST_HOME (stop the stack first: one process opens it): point
        id -> payload (without the write timestamp) and vector; the manifest's versions, statuses and chunk counts."""
        from docingest.core.store import QdrantLocation, QdrantStore

        store = QdrantStore(QdrantLocation(path=self.tmp / "docingest-home" / "qdrant"))
        physical = store.resolve(collection)
        points = {p["id"]: ({k: v for k, v in p["payload"].items() if k != "ingested_at"},
                            [round(x, 5) for x in p["vector"][""]])
                  for p in store.points(physical, with_vectors=True)}
        scope = next(iter(points.values()))[0]["source_uri"]
        manifest = {r.path: (r.version, r.status.value, r.chunks) for r in store.manifest(physical, scope).values()}
        return {"points": points, "manifest": manifest}


@pytest.fixture
def stack(tmp_path):
    """A real Prefect server for the integration tests that run docingest under it and its workers."""
    from support import wait_http

    s = Stack(tmp_path)
    server = s.start("server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(s.port))
    wait_http(f"{s.api}/health", server, s.tmp / "server.log", timeout=120)  # fresh database: 13 s idle, 23 s loaded
    try:
        yield s
    finally:
        s.stop()
