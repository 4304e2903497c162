"""What a run costs before and after its work: a re-sync with nothing to embed never loads the model, and no Prefect
temporary server outlives the command that started it (the CLI starts it early; `serve` stops it on SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXE = Path(sys.executable).with_name("docingest")


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (our unique PREFECT_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def env(tmp_path, prefect_home):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DOCINGEST_"))}
    e.update(DOCINGEST_HOME=str(tmp_path / "home"), PREFECT_HOME=prefect_home(tmp_path / "prefect-home-startup"),
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return e


def test_noop_resync_skips_the_model_and_the_flow_run_and_leaves_no_server_behind(env, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"n{i}.md").write_text(f"# Note {i}\n\nThe archive keeps note {i} for seven years.\n")
    (docs / "blob.bin").write_bytes(b"\x00\x01")  # an unsupported format: skipped by the plan, run after run
    first = subprocess.run([str(EXE), "ingest", str(docs), "-c", "notes", "--json"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["documents"]["new"] == 3
    assert processes_with(env["PREFECT_HOME"]) == []  # the early-started temporary server stopped with the CLI

    script = ("import sys, json; from docingest.flows.ingest import ingest_documents; "
              f"r = ingest_documents(source={str(docs)!r}, collection='notes'); "
              "print(json.dumps([r.documents.unchanged, 'sentence_transformers' in sys.modules, 'torch' in sys.modules]))")
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout.strip().splitlines()[-1]) == [3, False, False]

    # A CLI re-sync with nothing to write is answered from the plan: no flow run, and the same result as the flow's.
    answered = subprocess.run([str(EXE), "ingest", str(docs), "-c", "notes", "--json"], env=env, capture_output=True,
                              text=True, timeout=300)
    assert answered.returncode == 0, answered.stderr[-2000:]
    recorded = subprocess.run([str(EXE), "ingest", str(docs), "-c", "notes", "--json"], capture_output=True,
                              env={**env, "DOCINGEST_RECORD_UNCHANGED_RUNS": "1"}, text=True, timeout=300)
    assert recorded.returncode == 0, recorded.stderr[-2000:]
    answered, recorded = json.loads(answered.stdout), json.loads(recorded.stdout)
    assert answered["flow_run_id"] == "" and recorded["flow_run_id"]
    assert answered["documents"]["unchanged"] == 3 and answered["documents"]["skipped"] == 1
    different = {"flow_run_id", "duration_s", "stage_seconds"}
    assert {k: v for k, v in answered.items() if k not in different} == \
        {k: v for k, v in recorded.items() if k not in different}
    assert processes_with(env["PREFECT_HOME"]) == []

    (docs / "n1.md").write_text("# Note 1\n\nThe archive now keeps note 1 for ten years.\n")
    third = subprocess.run([str(EXE), "ingest", str(docs), "-c", "notes", "--json"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    data = json.loads(third.stdout)
    assert (data["documents"]["changed"], data["chunks"]["embedded"], data["chunks"]["deleted"]) == (1, 1, 1)
    assert data["flow_run_id"]  # something to write: a flow run
    import sqlite3

    with sqlite3.connect(Path(env["PREFECT_HOME"]) / "prefect.db") as db:
        tags = db.execute("select name, tags from task_run where flow_run_id = ?", (data["flow_run_id"],)).fetchall()
    # No limit on a stage tag in the temporary server's database: the task runs carry no tags, so none asks it for
    # concurrency slots (flows/locks.py: stage_limits_apply).
    assert tags and all(json.loads(t) == [] for _, t in tags), tags  # (rows come from events the server recorded)

    (docs / "n2.md").unlink()  # a full sync with a document to delete is a flow run too
    fourth = subprocess.run([str(EXE), "ingest", str(docs), "-c", "notes", "--mode", "full", "--json"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    data = json.loads(fourth.stdout)
    assert data["documents"]["deleted"] == 1 and data["flow_run_id"]


def test_serve_stops_its_temporary_prefect_server_on_sigterm(env, tmp_path, free_port, wait_http):
    port = free_port()
    env = dict(env, DOCINGEST_JWT_SECRET="x" * 40)
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(EXE), "serve", "--port", str(port)], env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=120)
        assert len(processes_with(env["PREFECT_HOME"])) == 1  # a health probe starts nothing
        # The first job starts Prefect's temporary server.
        token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600, "collections": ["*"]}, "x" * 40,
                           algorithm="HS256")
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
            made = client.post("/api/v1/documents", data={"collection": "kb"},
                               files={"file": ("a.md", b"# A\n\nThe canteen opens at eight.\n", "text/markdown")})
            assert made.status_code == 201, made.text
            deadline = time.monotonic() + 240
            while client.get(f"/api/v1/jobs/{made.json()['job_id']}").json()["state"] not in ("completed", "failed"):
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.5)
        assert len(processes_with(env["PREFECT_HOME"])) >= 2  # the service and its temporary Prefect server
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        deadline = time.monotonic() + 15  # multiprocessing's helpers end when they see their parent gone
        while processes_with(env["PREFECT_HOME"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_with(env["PREFECT_HOME"]) == [], log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_prepared_prefect_database_is_migrated_and_used_by_the_next_run(env, tmp_path):
    """`python -m docingest.ephemeral` (the Docker image's build step) leaves a migrated database with block types
    registered and no write-ahead log; a run then uses it as it is (no second database, block registration skipped)."""
    import sqlite3

    env = dict(env, PREFECT_HOME=str(tmp_path / "empty-prefect-home"))  # the first run on a machine
    done = subprocess.run([sys.executable, "-m", "docingest.ephemeral"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    home = Path(env["PREFECT_HOME"])
    database = home / "prefect.db"
    assert done.stdout.strip() == f"Prefect database ready: {database}"
    assert not (home / "prefect.db-wal").exists() or (home / "prefect.db-wal").stat().st_size == 0
    with sqlite3.connect(database) as db:
        assert db.execute("select count(*) from alembic_version").fetchone() == (1,)
        block_types = db.execute("select count(*) from block_type").fetchone()[0]
    assert block_types > 0
    assert "block_auto_registration" in (home / "memo_store.toml").read_text()
    assert processes_with(env["PREFECT_HOME"]) == []

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Retention\n\nInvoices are kept for ten years.\n")
    run = subprocess.run([str(EXE), "ingest", str(docs), "-c", "prepared", "--json"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    with sqlite3.connect(database) as db:
        assert db.execute("select count(*) from flow_run").fetchone() == (1,)  # the run went into that database
        assert db.execute("select count(*) from block_type").fetchone()[0] == block_types


DEFERRED_SKLEARN = """
import json, sys
import numpy as np
from docingest.core.embed import load_model
loaded = load_model("sentence-transformers/all-MiniLM-L6-v2")
vectors = loaded.model.encode(["the archive keeps notes", "notes are kept"], normalize_embeddings=True)
out = {"sklearn_after_load": sorted(m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")),
       "dimension": int(vectors.shape[1])}
from sentence_transformers.util import similarity
a, b = np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0]])
out["manhattan"] = similarity.pairwise_distances(a, b, metric="manhattan").ravel().tolist()  # the deferred name
import sklearn.metrics
out["real_module"] = type(sys.modules["sklearn.metrics"]).__name__ == "module" and hasattr(sklearn.metrics, "ndcg_score")
print(json.dumps(out))
"""


def test_the_model_loads_without_importing_scikit_learn_which_still_works_when_asked_for(env):
    """sentence-transformers imports scikit-learn at its top for a similarity function embedding never calls: the
    model loads without it, the deferred function still computes, and a later import gets the real module."""
    run = subprocess.run([sys.executable, "-c", DEFERRED_SKLEARN], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["sklearn_after_load"] == []
    assert out["dimension"] == 384
    assert out["manhattan"] == [0.0, 7.0]
    assert out["real_module"] is True


def test_nothing_is_deferred_when_scikit_learn_is_already_imported(env):
    code = ("import json, sklearn.metrics\n"
            "from docingest.core.embed import sentence_transformer_class\n"
            "sentence_transformer_class()\n"
            "from sentence_transformers.util import similarity\n"
            "print(json.dumps(similarity.pairwise_distances is sklearn.metrics.pairwise_distances))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "true"


def test_while_deferred_another_thread_can_import_scikit_learn_metrics_and_its_submodules(env):
    """The stand-in's window: a submodule imports through its real folder, any other name ends the deferral."""
    code = ("import json, sys\n"
            "from docingest.core import embed\n"
            "stand_in = embed.sklearn_metrics_stand_in()\n"
            "sys.modules['sklearn.metrics'] = stand_in\n"
            "from sklearn.metrics.pairwise import euclidean_distances\n"
            "sub = euclidean_distances([[0.0, 0.0]], [[3.0, 4.0]]).ravel().tolist()\n"
            "from sklearn.metrics import ndcg_score\n"
            "import sklearn.metrics\n"
            "print(json.dumps({'sub': sub, 'ended': sys.modules['sklearn.metrics'] is not stand_in,\n"
            "                  'real': sklearn.metrics.ndcg_score is ndcg_score and hasattr(sklearn.metrics, 'f1_score')}))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.splitlines()[-1]) == {"sub": [5.0], "ended": True, "real": True}
