"""The store on both backends (Qdrant Edge embedded, and qdrant-client as the server stand-in): same answers, the
embedded layout's promises (one process, atomic aliases, damaged folders refused), conversion of old local-mode
folders, export, and index building."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from docingest.core.store import QdrantStore, close_backends
from docingest.datamodel import ManifestRecord
from docingest.exceptions import ConfigurationError, StoreError
from docingest.targets import QdrantTarget

pytestmark = pytest.mark.integration

DOCINGEST = Path(sys.executable).with_name("docingest")


def pid(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"point-{i}"))


def did(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"doc-{n}"))


def points(n: int, version: str = "v1", start: int = 0) -> list[dict]:
    return [{"id": pid(start + i), "vector": [1.0, float(i), 0.5, 0.0],
             "payload": {"doc_id": did(i % 3), "version": version, "path": f"p{i % 3}.md", "text": f"text {i}",
                         "source_uri": "file:///src", "chunk_index": i}} for i in range(n)]


def record(doc_id: str, path: str) -> ManifestRecord:
    return ManifestRecord(doc_id=doc_id, source_uri="file:///src", path=path, uri=f"file:///src/{path}",
                          version="v1", content_hash="h", fingerprint="f", chunks=1, status="success")


@pytest.fixture(autouse=True)
def _closed():
    yield
    close_backends()


def fill(store: QdrantStore) -> str:
    physical = store.ensure_collection("docs", 4)
    store.upsert("docs", points(9), batch_size=4)
    store.write_manifest("docs", [record(did(0), "p0.md"), record(did(1), "p1.md")])
    return physical


def test_both_backends_answer_the_same(store):
    physical = fill(store)
    assert physical == "docs__v1" and store.aliases() == {"docs": "docs__v1"}
    assert store.list_collections() == ["docs__v1", "docs__v1__manifest"]
    assert store.count("docs") == 9 and store.collection_exists("docs") and not store.collection_exists("nope")
    assert sorted(store.manifest("docs", "file:///src")) == ["p0.md", "p1.md"]
    assert store.manifest("docs", "file:///other") == {}
    assert store.source_uris("docs") == ["file:///src"]
    # one v2 point per document; then d1 keeps only v2, and d2 loses every version
    store.upsert(physical, points(3, version="v2", start=100))
    assert store.delete_other_versions_many(physical, [(did(1), "v2"), (did(2), None)]) == 3 + 4
    assert store.count(physical) == 3 + 1 + 1  # d0: three v1 and one v2; d1: one v2
    assert store.delete_other_versions(physical, did(0), None) == 4
    store.delete_manifest("docs", [did(0)])
    assert sorted(store.manifest("docs", "file:///src")) == ["p1.md"]
    store.upsert(physical, points(2, start=200))
    hits = store.query("docs", [1.0, 1.0, 0.5, 0.0], limit=2)
    assert len(hits) == 2 and hits[0][0] >= hits[1][0] and hits[0][1]["text"] == "text 1"
    every = list(store.points("docs", with_vectors=True, page=1))
    assert len(every) == 3 and all(len(p["vector"][""]) == 4 for p in every)
    with pytest.raises(ConfigurationError, match="4-dimensional"):
        store.ensure_collection("docs", 8)


def test_edge_store_reopens_with_points_aliases_and_manifest(tmp_path, store_factory):
    # one folder, opened, closed and opened again: the embedded layout itself
    fill(store_factory("edge", tmp_path / "q"))
    close_backends()
    store = store_factory("edge", tmp_path / "q")
    assert store.aliases() == {"docs": "docs__v1"} and store.count("docs") == 9
    assert json.loads((tmp_path / "q" / "aliases.json").read_text()) == {"aliases": {"docs": "docs__v1"}}
    assert json.loads((tmp_path / "q" / "docingest-store.json").read_text())["engine"] == "qdrant-edge"
    assert not list((tmp_path / "q").glob(".*tmp")), "the alias file is replaced through a temporary file"
    store.drop_collection("docs__v1")
    assert store.list_collections() == [] and not list((tmp_path / "q" / "collections").iterdir())


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    return subprocess.run([str(DOCINGEST), *args], capture_output=True, text=True, timeout=300, env=full, cwd=cwd)


def test_a_second_writer_is_refused_with_the_holder_named_and_readers_go_through_the_holder(tmp_path, store_factory):
    from docingest import store_reads  # noqa: F401 - this process shares reads of what it holds, as the flow's does

    q = str(tmp_path / "q")
    fill(store_factory("edge", tmp_path / "q"))  # this process holds the store
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nText.\n")
    proc = run_cli("ingest", str(tmp_path / "docs"), "-c", "docs", "--qdrant-path", q)  # a write: refused
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert q in lines[0] and f"process {os.getpid()}" in lines[0] and "DOCINGEST_QDRANT_URL" in lines[0]
    held = run_cli("export", "-c", "docs", "--qdrant-path", q)  # a read: answered by this process, on its socket
    assert held.returncode == 0, held.stderr
    close_backends()  # released: the next process opens it (the kernel also releases it when a holder dies)
    assert not (tmp_path / "q" / "docingest.sock").exists()
    proc = run_cli("export", "-c", "docs", "--qdrant-path", q)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 9 and proc.stdout == held.stdout


def test_export_streams_points_as_json_lines(tmp_path, store_factory):
    fill(store_factory("edge", tmp_path / "q"))  # filled here, closed, then read by the CLI in another process
    close_backends()
    q = str(tmp_path / "q")
    proc = run_cli("export", "-c", "docs", "--qdrant-path", q, "--vectors", "--output", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "9 points of docs exported" in proc.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in lines) == sorted(pid(i) for i in range(9))  # manifests are not exported
    assert all(set(p) == {"id", "payload", "vector"} and len(p["vector"]["dense"]) == 4 for p in lines)
    assert {p["payload"]["text"] for p in lines} == {f"text {i}" for i in range(9)}
    plain = run_cli("export", "-c", "docs__v1", "--qdrant-path", q)
    assert plain.returncode == 0 and all(set(json.loads(x)) == {"id", "payload"} for x in plain.stdout.splitlines())
    for name in ("nope", "docs__v1__manifest"):
        missing = run_cli("export", "-c", name, "--qdrant-path", q, "--output", str(tmp_path / "none.jsonl"))
        assert missing.returncode == 2 and name in missing.stderr and not (tmp_path / "none.jsonl").exists()


def test_export_reads_either_backend_in_the_process(store, tmp_path):
    """The Python export on the store the settings' engine opens (the server stand-in included); the CLI test above
    covers the embedded store from another process, test_store_congruence compares the two engines' lines."""
    from docingest.export import export_collection

    fill(store)
    out = tmp_path / "out.jsonl"
    with out.open("w") as fh:
        assert export_collection("docs", fh, vectors=True, qdrant=QdrantTarget(path=str(store.location.path))) == 9
    assert all(len(json.loads(x)["vector"]["dense"]) == 4 for x in out.read_text().splitlines())


def test_an_old_local_mode_folder_is_named_and_converted_in_place(tmp_path, store_factory):
    old = store_factory("qdrant-client", tmp_path / "q")  # an old local-mode folder, converted to Edge below
    fill(old)
    old.ensure_collection("other", 4, alias=False)
    close_backends()
    q = str(tmp_path / "q")
    before = sorted(p.name for p in (tmp_path / "q").iterdir())

    refused = run_cli("search", "text", "-c", "docs", "--qdrant-path", q)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{q} was written by qdrant-client's local mode" in lines[0], refused.stderr
    assert lines[0].endswith(f"convert it once with `docingest convert-store --qdrant-path {q}`")
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == before, "nothing is written to an old folder"

    proc = run_cli("convert-store", "--qdrant-path", q)
    assert proc.returncode == 0, proc.stderr
    assert "docs__v1: 9 points" in proc.stdout and "alias docs -> docs__v1" in proc.stdout
    assert (tmp_path / "q" / "meta.json").is_file() and (tmp_path / "q" / "collection").is_dir()  # left in place
    store = store_factory("edge", tmp_path / "q")
    assert store.aliases() == {"docs": "docs__v1"}
    assert store.count("docs") == 9 and sorted(store.manifest("docs", "file:///src")) == ["p0.md", "p1.md"]
    assert set(store.list_collections()) == {"docs__v1", "docs__v1__manifest", "other", "other__manifest"}
    assert store.query("docs", [1.0, 2.0, 0.5, 0.0], 1)[0][1]["text"] == "text 2"
    close_backends()
    again = run_cli("convert-store", "--qdrant-path", q)
    assert again.returncode == 0 and "converted already" in again.stdout


@pytest.mark.parametrize("damage", ["config", "segments"])
def test_a_damaged_collection_folder_is_refused_and_left_as_it_is(tmp_path, store_factory, damage):
    fill(store_factory("edge", tmp_path / "q"))  # the embedded layout, damaged below
    close_backends()
    shard = tmp_path / "q" / "collections" / "docs__v1"
    if damage == "config":
        (shard / "edge_config.json").write_text('{"vectors": {"": {"si')
    else:
        for segment in (shard / "segments").iterdir():
            for f in segment.rglob("*"):
                if f.is_file():
                    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])
    snapshot = {p: p.read_bytes() for p in shard.rglob("*") if p.is_file()}
    proc = run_cli("search", "text", "-c", "docs", "--qdrant-path", str(tmp_path / "q"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(shard) in lines[0], proc.stderr
    assert {p: p.read_bytes() for p in shard.rglob("*") if p.is_file()} == snapshot


def test_the_index_is_built_once_enough_points_are_not_indexed(store_factory):
    store = store_factory("edge", index_from_points=300)  # the embedded engine builds its own index
    physical = store.ensure_collection("docs", 4)
    store.upsert(physical, points(200))
    assert not store.maintain(physical).indexed  # 200 < 300: exact search is enough
    store.upsert(physical, points(400, start=200))
    upkeep = store.maintain(physical)
    assert upkeep.indexed and upkeep.points == 600 and upkeep.seconds >= 0
    assert not store.maintain(physical).indexed  # nothing new to index
    assert store.query(physical, [1.0, 5.0, 0.5, 0.0], 1)[0][1]["text"] == "text 5"


def test_writes_are_refused_clearly_while_the_disk_is_nearly_full(store_factory):
    """The engine writes through memory-mapped files (a full disk would kill the process with SIGBUS), so writes stop
    with an error while less than ``min_free_mb`` is free, and go on once there is room again."""
    store = store_factory("edge")  # the embedded engine's guard
    location = store.location
    physical = store.ensure_collection("docs", 4)
    store.upsert(physical, points(3))
    store.backend.location = location.model_copy(update={"min_free_mb": 2**40})  # "the disk is full" now
    with pytest.raises(StoreError, match=r"MB free on its disk \(writes need 1099511627776 MB\)"):
        store.upsert(physical, points(3, start=3))
    assert store.count(physical) == 3  # reads go on
    store.backend.location = location
    store.upsert(physical, points(3, start=3))
    assert store.count(physical) == 6


def test_a_full_disk_fails_the_run_clearly_and_a_later_run_completes(tmp_path):
    """For real, on a small tmpfs (needs root; skipped elsewhere): the run whose upserts meet a full disk fails with
    the reason, and once space is freed the next run writes what the failed one could not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("# Alpha\n\nThe first document talks about alpacas.\n")
    env = {"DOCINGEST_HOME": str(tmp_path / "home"), "DOCINGEST_QDRANT_PATH": str(disk / "q")}
    try:
        first = run_cli("ingest", str(src), "-c", "docs", env=env)
        assert first.returncode == 0, first.stderr
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with (disk / "filler").open("wb") as fh:  # leave 20 MB: less than the 64 MB writes need
            fh.truncate(0)
            for _ in range((free - 20 * 2**20) // 2**20):
                fh.write(b"\0" * 2**20)
        (src / "b.md").write_text("# Beta\n\nThe second document talks about bears and beavers.\n")
        full = run_cli("ingest", str(src), "-c", "docs", env=env)
        assert full.returncode != 0
        assert "MB free on its disk" in full.stderr and "free some space and run again" in full.stderr, full.stderr
        (disk / "filler").unlink()
        later = run_cli("ingest", str(src), "-c", "docs", "--json", env=env)
        assert later.returncode == 0, later.stderr
        result = json.loads(later.stdout)
        assert (result["documents"]["new"], result["documents"]["unchanged"]) == (1, 1)
        hits = run_cli("search", "bears and beavers", "-c", "docs", "--json", env=env)
        assert json.loads(hits.stdout)["hits"][0]["path"] == "b.md"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
