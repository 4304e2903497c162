"""Parse workers and their fork server never outlive the process that owns them, and never hold its standard
streams: a Prefect process worker reads a flow-run process's stdout and stderr to their end before it counts the run
as finished and before it exits on SIGTERM (docs/operations.md, "Signals")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# The owner: starts a parse worker through the fork server, parses one document, then (argv[1]) parses a document
# that stalls forever in the background and reports the pids; it exits normally or is killed by the test.
OWNER = r"""
import os, sys, threading
from pathlib import Path
from multiprocessing import forkserver
from docingest.core.embed import load_model
from docingest.core.worker import ParseWorker, WorkerConfig
from docingest.options import ChunkOptions, ParseOptions, PdfMode

folder = Path(sys.argv[2])
model = load_model("sentence-transformers/all-MiniLM-L6-v2")
config = WorkerConfig(ParseOptions(timeout_s=600), ChunkOptions(), PdfMode.FAST, model.info.location, 256)
first, second = ParseWorker(config), ParseWorker(config)
assert first.run(folder / "ok.md").kind == "ok"
if sys.argv[1] == "stall":
    threading.Thread(target=second.run, args=(folder / "stuck.md",), daemon=True).start()
    while not (folder / "stalled").exists():  # the worker is inside the stuck document
        threading.Event().wait(0.05)
pids = [forkserver._forkserver._forkserver_pid, first.proc.pid] + ([second.proc.pid] if second.proc else [])
print("PIDS", *pids, flush=True)
sys.stdout.write("ready\n")
sys.stdout.flush()
if sys.argv[1] == "stall":
    threading.Event().wait()  # until the test kills us
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie holds no file, pipe or memory: only a pid until init reaps it


def _start_owner(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, list[int]]:
    (tmp_path / "ok.md").write_text("# Fine\n\nThis document parses at once.\n")
    (tmp_path / "stuck.md").write_text("# Stuck\n\nThe parser never returns from this one.\n")
    env = dict(os.environ, DOCINGEST_FAULT="stall:stuck.md", DOCINGEST_FAULT_REPORT=str(tmp_path / "stalled"))
    env.pop("DOCINGEST_PARSE_START_METHOD", None)
    # stdout and stderr are one pipe, as a Prefect process worker reads them
    owner = subprocess.Popen([sys.executable, "-c", OWNER, mode, str(tmp_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
    pids: list[int] = []
    for line in owner.stdout:
        if line.startswith(b"PIDS"):
            pids = [int(p) for p in line.split()[1:]]
        if line == b"ready\n":
            break
    assert pids, "the owner did not start its parse workers"
    return owner, pids


def _read_to_eof(owner: subprocess.Popen, limit_s: float) -> bool:
    """Whether the owner's stdout reaches its end within limit_s (a reader thread: a pipe read has no timeout)."""
    import threading

    done = threading.Event()

    def drain() -> None:
        owner.stdout.read()
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    return done.wait(limit_s)


@pytest.mark.skipif(sys.platform != "linux", reason="the fork server and pidfd are Linux's")
def test_a_killed_owner_leaves_no_parser_running_and_its_output_pipe_ends(tmp_path):
    """The flow-run process SIGKILLed (a crash, a cancel past its grace period) while a worker is stuck in a
    document: the fork server and every parse worker end, and the owner's output pipe reaches its end."""
    owner, pids = _start_owner(tmp_path, "stall")
    assert len(pids) == 3 and all(_running(p) for p in pids)
    owner.kill()  # the owner alone (SIGKILL), as the kernel OOM killer or a cancel past its grace period would
    owner.wait()
    # Measured here: the pipe ends and every process is gone within ~0.3 s of the owner's death; 30 s is the
    # margin for a loaded 2-core CI machine. Before the fix neither ever happened (the stuck parser held both).
    assert _read_to_eof(owner, 30), "a descendant still holds the owner's stdout/stderr"
    deadline = time.monotonic() + 30
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _running(p)], "a parse worker or the fork server outlived its owner"


@pytest.mark.skipif(sys.platform != "linux", reason="the fork server is Linux's")
def test_an_owner_that_exits_normally_leaves_nothing_and_its_output_pipe_ends(tmp_path):
    owner, pids = _start_owner(tmp_path, "exit")
    assert owner.wait(120) == 0  # it is past its start (ready) and only closes its workers: seconds
    assert _read_to_eof(owner, 30), "a descendant still holds the owner's stdout/stderr"  # measured ~0.1 s
    deadline = time.monotonic() + 30  # the same ~0.3 s as above
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _running(p)]
