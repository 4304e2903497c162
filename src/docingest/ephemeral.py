"""Start Prefect's temporary API server at the beginning of a CLI run instead of at its first API call.

With no ``PREFECT_API_URL`` Prefect starts a temporary server (a uvicorn subprocess) when the flow first talks to the
API and waits for it, seconds on a small machine. ``start_early`` launches the very same server command as soon as
the CLI starts, so it boots on another core while this process imports and checks its inputs; ``adopt`` hands it to
Prefect as its temporary server (Prefect's own ``SubprocessASGIServer`` instance, so Prefect stops it at exit) once it
answers. Anything unexpected falls back to Prefect's own start: this only ever saves time.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class EarlyServer:
    port: int
    process: subprocess.Popen


def start_early() -> EarlyServer | None:
    """Launch Prefect's temporary server now when a run will need it (no PREFECT_API_URL); None otherwise."""
    try:
        import prefect
        from prefect.settings import PREFECT_API_URL, get_current_settings

        if PREFECT_API_URL.value() or not get_current_settings().server.ephemeral.enabled:
            return None
        if (server_module := sys.modules.get("prefect.server.api.server")) is not None and any(
                s.running for s in server_module.SubprocessASGIServer._instances.values()):
            return None  # this process already has one (the Python API or tests running several commands)
        with contextlib.closing(socket.socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}
        process = subprocess.Popen(  # the command SubprocessASGIServer runs
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
             "error", "--lifespan", "on"], env=env)
    except Exception:  # noqa: BLE001 - Prefect starts its own later
        return None
    early = EarlyServer(port, process)
    atexit.register(_stop, early)  # until adopted (or if never used: a dry run, a configuration error)
    return early


def _stop(early: EarlyServer) -> None:
    if early.process.poll() is None:
        early.process.terminate()
        try:
            early.process.wait(5)
        except subprocess.TimeoutExpired:
            early.process.kill()


def adopt(early: EarlyServer | None, timeout: float = 60.0) -> bool:
    """Wait for the early server to answer and make it Prefect's temporary server; False (and stopped) if it did not
    come up, so Prefect starts its own."""
    if early is None:
        return False
    try:
        import httpx
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL

        server = SubprocessASGIServer()
        if server.running or PREFECT_API_URL.value():
            _stop(early)
            return False
        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while True:
                if early.process.poll() is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"http://127.0.0.1:{early.port}/api/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    _stop(early)
                    return False
                time.sleep(0.05)
        server.port, server.server_process, server.running = early.port, early.process, True
        atexit.unregister(_stop)
        atexit.register(server.stop)
        return True
    except Exception:  # noqa: BLE001
        _stop(early)
        return False
