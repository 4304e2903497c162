"""Fixtures of the integration tests: small real servers on 127.0.0.1 only (git smart HTTP with token auth, an
authenticating S3 from moto, `docingest serve`, a Prefect server and its workers), Prefect API look-ups, and scanned
documents made for the OCR tests. Tests take these as fixtures (each helper is a fixture of its name, returning the
function or class): no test module imports from a conftest or a helper module (tests/unit/test_test_imports.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


# -- servers, Prefect homes and git (formerly support.py) ------------------------------------------------------------


def _wait_http(url: str, proc: subprocess.Popen, log: Path | None = None, timeout: float = 60) -> None:
    """Wait until ``url`` answers; fail with the end of ``log`` if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-2000:] if log and log.exists() else ""
                raise RuntimeError(f"{url} did not come up (exit {proc.poll()}): {tail}") from None
            time.sleep(0.2)


def _prefect_home(path: Path) -> str:
    """A Prefect home for a test's processes at ``path``, holding a copy of a Prefect database created and migrated
    once per test session (a home that has a database already keeps it). A fresh home otherwise pays Prefect's
    migrations at its first run (~15 s on 2 CPUs), as a user's machine does once; the tests of that first run itself
    (test_startup's prepared database, crash-resume) keep an empty home."""
    path.mkdir(parents=True, exist_ok=True)
    if (path / "prefect.db").exists():
        return str(path)
    template = _prefect_template()
    wal = template / "prefect.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the template's write-ahead log was not folded into it"
    for name in ("prefect.db", "memo_store.toml"):
        shutil.copy2(template / name, path / name)
    return str(path)


@lru_cache(maxsize=1)
def _prefect_template() -> Path:
    """The session's migrated database (one for all pytest-xdist workers), made by the Docker image's own step
    (``python -m docingest.ephemeral``)."""
    import tempfile

    from filelock import FileLock

    session = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    home = Path(tempfile.gettempdir()) / f"docingest-test-prefect-template-{session}"
    with FileLock(f"{home}.lock"):
        if not (home / "ready").exists():  # written last: a template half made by a failed attempt is made again
            shutil.rmtree(home, ignore_errors=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
            env["PREFECT_HOME"] = str(home)
            done = subprocess.run([sys.executable, "-m", "docingest.ephemeral"], env=env, capture_output=True,
                                  text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"could not prepare Prefect's database: {done.stderr[-2000:]}")
            (home / "ready").touch()
    return home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GitHttpServer:
    """``git http-backend`` behind a tiny HTTP server that wants ``Authorization: Basic base64(oauth2:<token>)`` —
    what GitLab accepts for a personal/project access token over HTTPS (TLS aside, the exchange is the same)."""

    def __init__(self, root: Path, token: str) -> None:
        self.root, self.token = root, token
        expected = "Basic " + base64.b64encode(f"oauth2:{token}".encode()).decode()
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                self._serve()

            def do_POST(self):  # noqa: N802
                self._serve()

            def _serve(self):
                outer.requests.append(f"{self.command} {self.path} auth={'Authorization' in self.headers}")
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = dict(os.environ, GIT_PROJECT_ROOT=str(outer.root), GIT_HTTP_EXPORT_ALL="1",
                           REQUEST_METHOD=self.command, PATH_INFO=path, QUERY_STRING=query,
                           CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(body)),
                           REMOTE_USER="oauth2", REMOTE_ADDR="127.0.0.1")
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> GitHttpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class AuthenticatingS3:
    """A moto S3 server in its own process that checks signatures (IAM auth on); ``access_key``/``secret_key`` are a
    real user's keys created through the first unauthenticated IAM calls."""

    def __init__(self, log: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"),
                                     stdout=log.open("w"), stderr=subprocess.STDOUT)

    def __enter__(self) -> AuthenticatingS3:
        import boto3

        try:
            _wait_http(f"{self.endpoint}/moto-api/", self.proc, self.log)
        except RuntimeError:
            self.__exit__()
            raise
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="ingest")
        iam.put_user_policy(UserName="ingest", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="ingest")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _task_states(flow_run_id: str, task_name: str) -> list[str]:
    """State names of a flow run's task runs whose name starts with ``task_name``, read from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.state.name for r in runs if r.name.startswith(task_name)]


def _service_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a `docingest serve` (and of CLI commands beside it) with its own homes under ``tmp_path`` and
    the given DOCINGEST_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DOCINGEST_", "AWS_"))}
    env.update(DOCINGEST_HOME=str(tmp_path / "home"), PREFECT_HOME=_prefect_home(tmp_path / "ph"), **settings)
    return env


def _start_service(tmp_path: Path, *args: str, **settings: str) -> tuple[subprocess.Popen, str, dict[str, str], Path]:
    """`docingest serve ARGS` on a free loopback port with :func:`service_env`, once it answers /health: (process,
    base URL, environment, log file). The caller stops it."""
    port = _free_port()
    env = _service_env(tmp_path, **settings)
    log = tmp_path / "serve.log"
    exe = Path(sys.executable).with_name("docingest")
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), *args], cwd=tmp_path,
                                env=env, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/health", proc, log, timeout=180)  # measured 1.7 s idle: the probes start nothing
    except RuntimeError:
        proc.kill()
        _reap(tmp_path / "ph")
        raise
    return proc, base, env, log


def _reap(prefect_home: Path) -> None:
    """Kill what a SIGKILLed process left running with this Prefect home: its temporary Prefect API server, which
    only the process itself could stop."""
    marker = f"PREFECT_HOME={prefect_home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, PermissionError):
            pass


def _git(*args: str, cwd: Path | None = None) -> None:
    """Run git, failing the test on an error."""
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _git_origin(tmp_path: Path) -> tuple[Path, Path]:
    """A bare repository ``origin.git`` on branch main and a clone ``work`` of it with a committer set."""
    origin = tmp_path / "origin.git"
    _git("init", "--bare", "-q", "-b", "main", str(origin))
    work = tmp_path / "work"
    _git("clone", "-q", str(origin), str(work))
    _git("config", "user.email", "t@example.com", cwd=work)
    _git("config", "user.name", "T", cwd=work)
    return origin, work


# -- scanned documents for the OCR tests (formerly scans.py) --------------------------------------------------------

def _page_image(lines: list[str], rotate: int = 0, size: tuple[int, int] = (1700, 2200)):
    """A white page at 200 DPI with the lines in black (DejaVu Sans when installed), rotated by ``rotate`` degrees."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(FONT, 40)
    except OSError:
        font = ImageFont.load_default(size=40)
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((150, 180 + 70 * n), line, font=font, fill=0)
    return image.rotate(rotate, expand=True) if rotate else image


def _scanned_pdf(path: Path, pages: list[list[str]], rotate: int = 0) -> Path:
    """An image-only PDF: one scanned page per entry, no text layer."""
    images = [_page_image(lines, rotate) for lines in pages]
    images[0].save(path, save_all=True, append_images=images[1:], resolution=200)
    return path


def _multipage_tiff(path: Path, pages: list[list[str]]) -> Path:
    images = [_page_image(lines) for lines in pages]
    images[0].save(path, save_all=True, append_images=images[1:], compression="tiff_deflate", dpi=(200, 200))
    return path


def _mixed_pdf(path: Path, born_digital: Path, scanned_lines: list[str], tmp: Path) -> Path:
    """The first page of a born-digital PDF, then a scanned page."""
    import pypdfium2 as pdfium

    scan = _scanned_pdf(tmp / "scan-page.pdf", [scanned_lines])
    out = pdfium.PdfDocument.new()
    with pdfium.PdfDocument(str(born_digital)) as text_pdf, pdfium.PdfDocument(str(scan)) as scan_pdf:
        out.import_pages(text_pdf, [0])
        out.import_pages(scan_pdf, [0])
        out.save(str(path))
    out.close()
    return path


# -- a Prefect server and its workers (tests/integration) ----------------------------------------------------------


class Stack:
    """A `prefect server start` on a loopback port (SQLite) and the processes a test starts beside it (workers, the
    upload service), all in this test's folder, with the environment they share. ``written_store`` is the fixture
    that opens (and, after the test, closes) the store the stack wrote."""

    def __init__(self, tmp: Path, written_store) -> None:
        self.tmp = tmp
        self.written_store = written_store
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DOCINGEST_"))}
        self.env.update(
            PREFECT_HOME=_prefect_home(tmp / "prefect-home"), PREFECT_API_URL=self.api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
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
        store = self.written_store(self.tmp / "docingest-home" / "qdrant")
        physical = store.resolve(collection)
        points = {p["id"]: ({k: v for k, v in p["payload"].items() if k != "ingested_at"},
                            [round(x, 5) for x in p["vector"][""]])
                  for p in store.points(physical, with_vectors=True)}
        scope = next(iter(points.values()))[0]["source_uri"]
        manifest = {r.path: (r.version, r.status.value, r.chunks) for r in store.manifest(physical, scope).values()}
        return {"points": points, "manifest": manifest}


@pytest.fixture
def stack(tmp_path, written_store):
    """A real Prefect server for the integration tests that run docingest under it and its workers."""
    s = Stack(tmp_path, written_store)
    server = s.start("server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(s.port))
    _wait_http(f"{s.api}/health", server, s.tmp / "server.log", timeout=120)  # fresh database: 13 s idle, 23 s loaded
    try:
        yield s
    finally:
        s.stop()


# -- a real Dask cluster (the `distributed` CLI) ---------------------------------------------------------------------


class DaskCluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, each in a process group of its own (a worker's group
    holds its nanny, the worker, its parse workers' fork server and the parse workers), all killed at ``stop``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCINGEST_", "PREFECT_API"))}
        # Parse workers are children of Dask's workers: those must not be daemonic. The model-info cache and any
        # Prefect files of the workers stay in the test's folder.
        self.env.update(DASK_DISTRIBUTED__WORKER__DAEMON="False", DOCINGEST_HOME=str(tmp / "dask-home"),
                        PREFECT_HOME=str(tmp / "dask-prefect-home"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        self.procs: dict[str, subprocess.Popen] = {}
        scheduler_file = tmp / "scheduler.json"
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(scheduler_file))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert self.procs["scheduler"].poll() is None and time.monotonic() < deadline, self.log("scheduler")
            time.sleep(0.1)
        time.sleep(0.2)  # written in one go, but read it whole
        self.address = json.loads(scheduler_file.read_text())["address"]

    def _start(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        with (self.tmp / f"dask-{name}.log").open("w") as log:
            proc = subprocess.Popen([str(BIN / "dask"), *args], env={**self.env, **env}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def add_worker(self, name: str, **env: str) -> subprocess.Popen:
        """A `dask worker --nthreads 1` under its nanny, with more environment variables (e.g. a DOCINGEST_FAULT)."""
        return self._start(name, "worker", self.address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                           "--name", name, **env)

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(n, timeout=timeout)

    def events(self, topic: str) -> list[dict]:
        """The events the workers logged under ``topic`` (e.g. each model load, ``docingest-model``)."""
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            return [msg for _, msg in client.get_events(topic)]

    def kill(self, name: str) -> None:
        """SIGKILL a worker's whole group: the nanny too, so the worker is gone for good (a nanny would restart it)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def log(self, name: str) -> str:
        path = self.tmp / f"dask-{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> list[int]:
        """Kill every group; returns the pids of those groups still alive afterwards (none, unless one escaped)."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(30)
        groups = {proc.pid for proc in self.procs.values()}
        deadline = time.monotonic() + 10  # a killed process's children are reaped by init a moment later
        while True:
            left = []
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError):
                        stat = Path(f"/proc/{entry}/stat").read_text()
                        fields = stat[stat.rindex(")") + 2:].split()
                        if int(fields[2]) in groups and fields[0] not in "ZX":
                            left.append(int(entry))
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)


@pytest.fixture
def dask_cluster(tmp_path):
    """``dask_cluster(workers=2, **env) -> DaskCluster``: a scheduler and ``workers`` workers (``--nthreads 1``, the
    extra environment variables given) on loopback, once they are registered; everything is killed after the test,
    and the test fails if a process of theirs outlived that."""
    clusters: list[DaskCluster] = []

    def start(workers: int = 2, **env: str) -> DaskCluster:
        cluster = DaskCluster(tmp_path)
        clusters.append(cluster)
        for n in range(workers):
            cluster.add_worker(f"worker-{n + 1}", **env)
        if workers:
            cluster.wait_for_workers(workers)
        return cluster

    yield start
    left = [pid for cluster in clusters for pid in cluster.stop()]
    assert left == [], f"processes of the Dask cluster outlived it: {left}"


# -- the helpers as fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def free_port():
    """``free_port() -> int``: a free TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture(scope="session")
def wait_http():
    """``wait_http(url, proc, log=None, timeout=60)``: wait until ``url`` answers; fail with ``log``'s end if ``proc``
    dies or time runs out."""
    return _wait_http


@pytest.fixture(scope="session")
def prefect_home():
    """``prefect_home(path) -> str``: a Prefect home at ``path`` holding a copy of the session's migrated database."""
    return _prefect_home


@pytest.fixture(scope="session")
def task_states():
    """``task_states(flow_run_id, task_name) -> list[str]``: state names of a flow run's task runs, from the API."""
    return _task_states


@pytest.fixture(scope="session")
def service_env():
    """``service_env(tmp_path, **settings) -> dict``: the environment of a `docingest serve` with its own homes."""
    return _service_env


@pytest.fixture(scope="session")
def start_service():
    """``start_service(tmp_path, *args, **settings) -> (process, base URL, environment, log)``: a `docingest serve` that
    answers /health; the caller stops it."""
    return _start_service


@pytest.fixture(scope="session")
def reap():
    """``reap(prefect_home)``: kill what a SIGKILLed process left running with this Prefect home."""
    return _reap


@pytest.fixture(scope="session")
def git():
    """``git(*args, cwd=None)``: run git, failing the test on an error."""
    return _git


@pytest.fixture(scope="session")
def git_origin():
    """``git_origin(tmp_path) -> (origin, work)``: a bare repository on branch main and a clone of it."""
    return _git_origin


@pytest.fixture(scope="session")
def git_http_server():
    """The :class:`GitHttpServer` class: ``with git_http_server(root, token) as server: server.url``."""
    return GitHttpServer


@pytest.fixture(scope="session")
def authenticating_s3():
    """The :class:`AuthenticatingS3` class: ``with authenticating_s3(log) as server: server.endpoint``."""
    return AuthenticatingS3


@pytest.fixture(scope="session")
def page_image():
    """``page_image(lines, rotate=0, size=(1700, 2200))``: a white 200 DPI page image with the lines in black."""
    return _page_image


@pytest.fixture(scope="session")
def scanned_pdf():
    """``scanned_pdf(path, pages, rotate=0) -> Path``: an image-only PDF, one scanned page per entry."""
    return _scanned_pdf


@pytest.fixture(scope="session")
def multipage_tiff():
    """``multipage_tiff(path, pages) -> Path``: a multi-page TIFF of scanned pages."""
    return _multipage_tiff


@pytest.fixture(scope="session")
def mixed_pdf():
    """``mixed_pdf(path, born_digital, scanned_lines, tmp) -> Path``: a born-digital page, then a scanned one."""
    return _mixed_pdf
