"""Fixtures of the integration tests that run docingest under a real Prefect server and its workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import free_port, prefect_home, wait_http

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Stack:
    """A `prefect server start` on a loopback port (SQLite) and the processes a test starts beside it (workers, the
    upload service), all in this test's folder, with the environment they share."""

    def __init__(self, tmp: Path) -> None:
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
    s = Stack(tmp_path)
    server = s.start("server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(s.port))
    wait_http(f"{s.api}/health", server, s.tmp / "server.log", timeout=120)
    try:
        yield s
    finally:
        s.stop()
