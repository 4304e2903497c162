"""Start Prefect's temporary API server at the beginning of a CLI run instead of at its first API call.

With no ``PREFECT_API_URL`` Prefect starts a temporary server (a uvicorn subprocess) when the flow first talks to the
API and waits for it, seconds on a small machine. ``start_early`` launches the very same server command as soon as
the CLI starts, so it boots on another core while this process imports and checks its inputs; ``adopt`` hands it to
Prefect as its temporary server (Prefect's own ``SubprocessASGIServer`` instance, so Prefect stops it at exit) once it
answers. Anything unexpected falls back to Prefect's own start: this only ever saves time.

In a fresh CLI process (Prefect not imported yet) whose Prefect configuration is the default one (no API URL in the
environment, the active profile, ``prefect.toml``, ``pyproject.toml`` or ``.env``), the server is launched before
Prefect is even imported and this process is pointed at it with ``PREFECT_API_URL``: Prefect then never imports its
server package here (1.5 s on a small machine), and the server is stopped by our exit handler, after Prefect's own
handlers have drained its event and log queues. A temporary server lives as long as this process, so flow runs on it
send no heartbeats (nothing could watch them; Prefect's heartbeat thread also holds a run's end by up to a second).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

_FALSE = ("0", "false", "f", "no", "n", "off")
TEMPORARY_API = "DOCINGEST_TEMPORARY_PREFECT_API"  # the PREFECT_API_URL we set: a server that ends with this process
_EPHEMERAL_SWITCHES = ("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "PREFECT_SERVER_EPHEMERAL_ENABLED")


@dataclass
class EarlyServer:
    port: int
    process: subprocess.Popen
    by_environment: bool = False  # launched before Prefect's import; this process has PREFECT_API_URL pointing at it
    ready: bool = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def temporary_servers() -> list:
    """The temporary Prefect API servers this process started (Prefect's ``SubprocessASGIServer`` instances).

    Prefect has no public way to list them; this is the one place that reads its private registry, and
    tests/unit/test_ephemeral.py fails loudly if Prefect renames or retypes it. Empty when Prefect's server package
    was never imported (then no server was started)."""
    server_module = sys.modules.get("prefect.server.api.server")
    # Still being imported by another thread (a service's first run starting the server): none is running yet.
    server_class = getattr(server_module, "SubprocessASGIServer", None)
    if server_class is None:
        return []
    return list(server_class._instances.values())


def stop_temporary_servers() -> None:
    """Stop every temporary Prefect API server this process started: those Prefect knows of, and any other child
    process running Prefect's server (a start that Prefect gave up waiting for stays out of its registry but keeps
    running; seen with two health probes during a slow first start)."""
    for server in temporary_servers():
        with contextlib.suppress(Exception):
            server.stop()
    proc = Path("/proc")
    if not proc.is_dir():
        return
    me = str(os.getpid())
    orphans: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == me and b"prefect.server.api.server" in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGTERM)
                orphans.append(int(entry.name))
    _reap(orphans)


def _reap(pids: list[int], grace_s: float = 5) -> None:
    """Wait until our SIGTERMed children are gone (uvicorn drains within a second), SIGKILL what is left after
    ``grace_s``: a command that returns leaves no server behind, not even for a moment."""
    deadline = time.monotonic() + grace_s
    for pid in pids:
        try:
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)
        except (ChildProcessError, ProcessLookupError):  # reaped already (by its Popen object)
            continue


def start_early() -> EarlyServer | None:
    """Launch Prefect's temporary server now when a run will need it (no PREFECT_API_URL); None otherwise."""
    if "prefect" not in sys.modules and (early := _start_before_prefect()) is not None:
        return early
    try:
        import prefect
        from prefect.settings import PREFECT_API_URL, get_current_settings

        if PREFECT_API_URL.value() or not get_current_settings().server.ephemeral.enabled:
            return None
        if any(s.running for s in temporary_servers()):
            return None  # this process already has one (the Python API or tests running several commands)
        port = _free_port()
        env = {**os.environ, **_SERVER_ENV, **get_current_settings().to_environment_variables(exclude_unset=True)}
        process = subprocess.Popen(_server_command(port, str(prefect.__module_path__.parent)), env=env)
    except Exception:  # noqa: BLE001 - Prefect starts its own later
        return None
    early = EarlyServer(port, process)
    atexit.register(_stop, early)  # until adopted (or if never used: a dry run, a configuration error)
    return early


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _server_command(port: int, site_packages: str) -> list[str]:
    """The command and environment Prefect's ``SubprocessASGIServer`` runs (prefect/server/api/server.py)."""
    return [sys.executable, "-m", "uvicorn", "--app-dir", site_packages, "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
            "error", "--lifespan", "on"]


def _start_before_prefect() -> EarlyServer | None:
    """The fast path: launch the server and point this process at it before Prefect is imported."""
    try:
        if prefect_configured_elsewhere(os.environ, Path.cwd()):
            return None
        spec = importlib.util.find_spec("prefect")  # finds the package without importing it
        if spec is None or spec.origin is None:
            return None
        port = _free_port()
        process = subprocess.Popen(_server_command(port, str(Path(spec.origin).parent.parent)),
                                   env={**os.environ, **_SERVER_ENV})
    except Exception:  # noqa: BLE001 - the ordinary path below or Prefect's own start
        return None
    early = EarlyServer(port, process, by_environment=True)
    os.environ["PREFECT_API_URL"] = os.environ[TEMPORARY_API] = early.api_url
    atexit.register(_stop, early)  # registered before Prefect's handlers, so it runs after them
    return early


def prefect_configured_elsewhere(env: Mapping[str, str], cwd: Path) -> bool:
    """True unless Prefect's settings would come out as the defaults for the API: no ``PREFECT_API_URL`` in the
    environment or the active profile, the temporary server allowed, and no ``prefect.toml``, ``[tool.prefect]`` or
    ``PREFECT_`` line in ``.env`` in the working folder (Prefect reads those too; we leave such set-ups to Prefect)."""
    try:
        if env.get("PREFECT_API_URL") or any(env.get(k, "").strip().lower() in _FALSE for k in _EPHEMERAL_SWITCHES
                                             if k in env):
            return True
        if (cwd / "prefect.toml").exists():
            return True
        if (cwd / "pyproject.toml").is_file() and "tool.prefect" in (cwd / "pyproject.toml").read_text(errors="replace"):
            return True
        if (cwd / ".env").is_file() and "PREFECT_" in (cwd / ".env").read_text(errors="replace"):
            return True
        home = Path(env.get("PREFECT_HOME") or "~/.prefect").expanduser()
        profiles_path = Path(env.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
        profiles = tomllib.loads(profiles_path.read_text()) if profiles_path.is_file() else {}
        active = env.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
        if active not in profiles.get("profiles", {}):
            return active != "ephemeral"  # Prefect's own profiles: only "ephemeral" has no API URL
        settings = profiles["profiles"][active]
        return "PREFECT_API_URL" in settings or any(str(settings[k]).strip().lower() in _FALSE
                                                    for k in _EPHEMERAL_SWITCHES if k in settings)
    except Exception:  # noqa: BLE001 - unreadable configuration: let Prefect read it
        return True


def _stop(early: EarlyServer) -> None:
    if early.process.poll() is None:
        early.process.terminate()
        try:
            early.process.wait(5)
        except subprocess.TimeoutExpired:
            early.process.kill()
            early.process.wait()


def discard(early: EarlyServer | None) -> None:
    """Stop an early server that no run will use (a re-sync answered without a flow run)."""
    if early is not None:
        _stop(early)


def _wait_healthy(early: EarlyServer, deadline: float) -> bool:
    import httpx

    with httpx.Client() as client:
        while True:
            if early.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{early.api_url}/health", timeout=2).status_code == 200:
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def adopt(early: EarlyServer | None, timeout: float = 60.0) -> bool:
    """Wait for the early server to answer and make it Prefect's temporary server; False (and stopped) if it did not
    come up, so Prefect starts its own (the fast path: the caller runs the flow in ``fallback(early)``)."""
    if early is None:
        return False
    if early.by_environment:
        early.ready = _wait_healthy(early, time.monotonic() + timeout)
        if not early.ready:
            _stop(early)
        return early.ready
    try:
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL

        server = SubprocessASGIServer()
        if server.running or PREFECT_API_URL.value():
            _stop(early)
            return False
        if not _wait_healthy(early, time.monotonic() + timeout):
            _stop(early)
            return False
        server.port, server.server_process, server.running = early.port, early.process, True
        atexit.unregister(_stop)
        atexit.register(server.stop)
        early.ready = True
        return True
    except Exception:  # noqa: BLE001
        _stop(early)
        return False


@contextlib.contextmanager
def run_settings(early: EarlyServer | None) -> Iterator[None]:
    """Prefect settings for the flow call: no heartbeats on a temporary server; and should the fast path's server
    have failed to start, Prefect's own temporary server instead of the dead address in ``PREFECT_API_URL``."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if early is None:
        yield
        return
    updates: dict = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    if early.by_environment and not early.ready:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        with temporary_settings(updates={PREFECT_API_URL: None}):
            server.start()
        updates[PREFECT_API_URL] = os.environ[TEMPORARY_API] = server.api_url
    elif not early.ready:
        updates = {}  # Prefect starts its own as usual (heartbeats included)
    with temporary_settings(updates=updates):
        yield


def temporary_api() -> bool:
    """Whether this process's Prefect API is a temporary server that ends with the process: Prefect's own (no
    ``PREFECT_API_URL``) or the one the fast path started. Such a server runs no lease repossessor and nothing can
    watch its runs after the process is gone."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    return not url or url == os.environ.get(TEMPORARY_API)


def prepare_database() -> str:
    """Create and migrate the database of Prefect's temporary server under ``PREFECT_HOME`` and register its block
    types, by starting that server once and stopping it. A run whose ``PREFECT_HOME`` is fresh (a container started
    from an image) otherwise waits for it before its flow can start: 8 s instead of 3 s to a healthy server on a 2-CPU
    machine. The Docker image runs this at build time (``python -m docingest.ephemeral``). Returns the database: its
    file, or for another database (PostgreSQL) its address without credentials."""
    import sqlite3

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        server = SubprocessASGIServer()
        server.start()
        server.stop()
    secret = get_current_settings().server.database.connection_url
    url = secret.get_secret_value() if secret is not None else ""
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix):  # another database (PostgreSQL): migrated by the start above, nothing to fold
        return url.rpartition("@")[2]
    database = url.removeprefix(prefix)
    with contextlib.closing(sqlite3.connect(database)) as connection:  # fold the write-ahead log into the file
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return database


if __name__ == "__main__":
    print(f"Prefect database ready: {prepare_database()}")
