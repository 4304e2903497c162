"""Test support: small real servers on 127.0.0.1 only (git smart HTTP with token auth, an authenticating S3 from
moto) and Prefect API look-ups."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def wait_http(url: str, proc: subprocess.Popen, log: Path | None = None, timeout: float = 60) -> None:
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


def prefect_home(path: Path) -> str:
    """A Prefect home for a test's processes at ``path``, holding a copy of a Prefect database created and migrated
    once per test session (a home that has a database already keeps it). A fresh home otherwise pays Prefect's
    migrations at its first run (~15 s on 2 CPUs), as a user's machine does once; the tests of that first run itself
    (test_startup's prepared database, crash-resume) keep an empty home."""
    import shutil

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
    import shutil
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


def free_port() -> int:
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
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"),
                                     stdout=log.open("w"), stderr=subprocess.STDOUT)

    def __enter__(self) -> AuthenticatingS3:
        import boto3

        try:
            wait_http(f"{self.endpoint}/moto-api/", self.proc, self.log)
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


def task_states(flow_run_id: str, task_name: str) -> list[str]:
    """State names of a flow run's task runs whose name starts with ``task_name``, read from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.state.name for r in runs if r.name.startswith(task_name)]


def service_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a `docingest serve` (and of CLI commands beside it) with its own homes under ``tmp_path`` and
    the given DOCINGEST_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DOCINGEST_", "AWS_"))}
    env.update(DOCINGEST_HOME=str(tmp_path / "home"), PREFECT_HOME=prefect_home(tmp_path / "ph"), **settings)
    return env


def start_service(tmp_path: Path, **settings: str) -> tuple[subprocess.Popen, str, dict[str, str], Path]:
    """`docingest serve` on a free loopback port with :func:`service_env`, once it answers /health: (process, base
    URL, environment, log file). The caller stops it."""
    port = free_port()
    env = service_env(tmp_path, **settings)
    log = tmp_path / "serve.log"
    exe = Path(sys.executable).with_name("docingest")
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                                env=env, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", proc, log, timeout=180)  # measured 1.7 s idle: the probes start nothing
    except RuntimeError:
        proc.kill()
        reap(tmp_path / "ph")
        raise
    return proc, base, env, log


def reap(prefect_home: Path) -> None:
    """Kill what a SIGKILLed process left running with this Prefect home: its temporary Prefect API server, which
    only the process itself could stop."""
    import signal

    marker = f"PREFECT_HOME={prefect_home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, PermissionError):
            pass


def git(*args: str, cwd: Path | None = None) -> None:
    """Run git, failing the test on an error."""
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def git_origin(tmp_path: Path) -> tuple[Path, Path]:
    """A bare repository ``origin.git`` on branch main and a clone ``work`` of it with a committer set."""
    origin = tmp_path / "origin.git"
    git("init", "--bare", "-q", "-b", "main", str(origin))
    work = tmp_path / "work"
    git("clone", "-q", str(origin), str(work))
    git("config", "user.email", "t@example.com", cwd=work)
    git("config", "user.name", "T", cwd=work)
    return origin, work
