"""kill -9 the ingest process at several points; a re-run must end with exactly the collection a clean run makes.

Each crash leaves a v2 sync half done (parsed but not written, new points without manifest, manifest without old
versions removed, deletions half done); the re-run must finish it. The run lock is a file lock, freed by the kernel
when the process dies, so the re-run never waits for a dead run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from docingest.core.store import QdrantStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAULTS = {"kb-prepare": "after-prepare:3", "kb-upsert": "after-upsert:1", "kb-finalize": "after-finalize:1",
          "kb-delete": "mid-delete:1"}
DOCS = {
    f"doc{i:02}.md": f"# Topic {i}\n\n" + " ".join(f"Paragraph {i}.{j} talks about subject {i * 7 + j}." for j in range(40))
    for i in range(8)
}


def write_version(docs: Path, version: int) -> None:
    """v1: doc00-doc07. v2: doc01, doc03, doc04, doc06 edited, doc07 deleted, doc08 added."""
    docs.mkdir(exist_ok=True)
    for name, text in DOCS.items():
        if version == 2 and name == "doc07.md":
            (docs / name).unlink(missing_ok=True)
            continue
        edited = version == 2 and name in ("doc01.md", "doc03.md", "doc04.md", "doc06.md")
        (docs / name).write_text(text + ("\n\nRevised in version two." if edited else ""))
    if version == 2:
        (docs / "doc08.md").write_text("# Topic 8\n\nA document added in version two.")
    else:
        (docs / "doc08.md").unlink(missing_ok=True)


def cli(args: list[str], qdrant: Path, tmp_path: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("docingest")
    # Embedded defaults, as a user runs it: the ephemeral Prefect API in each process, Qdrant local mode.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCINGEST_", "PREFECT_API"))}
    env.update(DOCINGEST_QDRANT_PATH=str(qdrant), DOCINGEST_HOME=str(tmp_path / "home"),
               PREFECT_HOME=str(tmp_path / "prefect-home"))
    if fault:
        env["DOCINGEST_FAULT"] = fault
    # Output to files, not pipes: a SIGKILLed CLI's ephemeral Prefect server outlives it for a moment and would keep
    # a pipe open.
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        code = subprocess.run([str(exe), *args], env=env, stdout=fo, stderr=fe, timeout=120).returncode
    return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())


def snapshot(store: QdrantStore, collection: str) -> dict:
    """Point id -> payload (without the write timestamp) and vector; the manifest's versions and statuses."""
    points = {}
    for p in store.points(collection, with_vectors=True):
        payload = {k: v for k, v in p["payload"].items() if k != "ingested_at"}
        points[p["id"]] = {"payload": payload, "vector": [round(x, 5) for x in p["vector"][""]]}
    scope = next(iter(points.values()))["payload"]["source_uri"]
    manifest = {r.path: (r.version, r.status.value, r.chunks) for r in store.manifest(collection, scope).values()}
    return {"points": points, "manifest": manifest}


@pytest.fixture
def reap_orphans(tmp_path, reap):
    """A SIGKILLed CLI cannot stop its ephemeral Prefect server: kill the ones started with this test's PREFECT_HOME."""
    yield
    reap(tmp_path / "prefect-home")


# Measured here (2 cores): 199 s for the whole test with 13 CLI runs in a full suite run (~15 s a run); with the v1
# store copied instead of ingested four times it runs 10 (87 s alone). Each run gets 120 s (8x), the test 900 s.
@pytest.mark.timeout(900)
def test_kill_9_at_four_points_then_rerun_equals_clean_run(tmp_path, reap_orphans, written_store):
    docs = tmp_path / "docs"

    def ingest(store: str, fault: str | None = None) -> subprocess.CompletedProcess:
        return cli(["ingest", str(docs), "-c", "kb", "--mode", "full", "--json"], tmp_path / store, tmp_path, fault)

    write_version(docs, 1)
    assert ingest("v1").returncode == 0
    for name in FAULTS:  # each crash starts from the same v1 collection: one store each, copies of one ingest
        shutil.copytree(tmp_path / "v1", tmp_path / name)
    write_version(docs, 2)
    for name, fault in FAULTS.items():
        crashed = ingest(name, fault)
        assert crashed.returncode == -signal.SIGKILL, (name, crashed.returncode, crashed.stderr[-2000:])
    reference = ingest("clean")  # a clean sync of the same folder at v2: same scope, so the same point ids
    assert reference.returncode == 0, reference.stderr[-2000:]

    for name in FAULTS:  # (all crashes first, then all resumes: a lock leaked by a crash would show here)
        resumed = ingest(name)
        assert resumed.returncode == 0, (name, resumed.stderr[-2000:])
        assert json.loads(resumed.stdout)["documents"]["failed"] == 0

    expected = snapshot(written_store(tmp_path / "clean"), "kb")
    assert sorted(expected["manifest"]) == [f"doc{i:02}.md" for i in range(9) if i != 7]
    for name in FAULTS:
        final = snapshot(written_store(tmp_path / name), "kb")
        assert final["manifest"] == expected["manifest"], name
        assert set(final["points"]) == set(expected["points"]), name  # same ids, no orphans or duplicates
        assert final["points"] == expected["points"], name  # same payloads and vectors
