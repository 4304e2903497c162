"""Incremental sync under real faults: plan, full-mode deletion and its guard, poison documents, the breaker,
concurrent runs, dead letters, artifacts."""

from __future__ import annotations

import json
import threading

import pytest
from typer.testing import CliRunner

from docingest.cli import app
from docingest.flows.ingest import ingest_documents
from docingest.options import IngestOptions
from docingest.retrieval import search

pytestmark = [pytest.mark.integration, pytest.mark.slow]
runner = CliRunner()


@pytest.fixture
def points(written_store):
    """``points(collection) -> {id: payload}``: the points of a collection in the store the test's runs wrote."""
    return lambda collection: {p["id"]: p["payload"] for p in written_store().points(collection)}


def write_docs(folder, docs: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text)
    return folder


TOPICS = {
    "alpha.md": "# Alpha\n\nAlpha covers the onboarding checklist for new engineers.\n",
    "beta.md": "# Beta\n\nBeta describes the quarterly budget review process.\n",
    "gamma.md": "# Gamma\n\nGamma explains how to request a new laptop.\n",
    "delta.md": "# Delta\n\nDelta lists the fire evacuation meeting points.\n",
}


def opts(**kw) -> IngestOptions:
    return IngestOptions.model_validate(kw)


def test_dry_run_prints_the_plan_and_writes_nothing(prefect_server, home, tmp_path, points, written_store):
    docs = write_docs(tmp_path / "d", TOPICS)
    (docs / "x.bin").write_bytes(b"\0")
    result = runner.invoke(app, ["ingest", str(docs), "-c", "dry", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True and plan["counts"]["new"] == 4 and plan["counts"]["skipped"] == 1
    assert sorted(plan["new"]) == sorted(TOPICS)
    assert not written_store().collection_exists("dry")

    ingest_documents(source=str(docs), collection="dry")
    (docs / "alpha.md").write_text("# Alpha\n\nRewritten.\n")
    (docs / "delta.md").unlink()
    result = runner.invoke(app, ["ingest", str(docs), "-c", "dry", "--dry-run", "--json", "--mode", "full"])
    plan = json.loads(result.stdout)
    assert plan["changed"] == ["alpha.md"] and plan["deleted"] == ["delta.md"]
    assert plan["counts"]["unchanged"] == 2
    assert len({p["path"] for p in points("dry").values()}) == 4  # still nothing written


def test_full_sync_tracks_adds_edits_and_deletes_exactly(prefect_server, home, tmp_path, points):
    docs = write_docs(tmp_path / "d", TOPICS)
    first = ingest_documents(source=str(docs), collection="sync", options=opts(mode="full"))
    assert first.documents.new == 4

    (docs / "beta.md").write_text("# Beta\n\nThe budget review moved to a yearly cadence.\n")
    (docs / "gamma.md").unlink()
    (docs / "epsilon.md").write_text("# Epsilon\n\nEpsilon documents the parking rules.\n")
    incremental = ingest_documents(source=str(docs), collection="sync")
    d = incremental.documents
    assert (d.new, d.changed, d.unchanged, d.deleted) == (1, 1, 2, 0)  # incremental never deletes
    assert any(p["path"] == "gamma.md" for p in points("sync").values())

    full = ingest_documents(source=str(docs), collection="sync", options=opts(mode="full"))
    d = full.documents
    assert (d.new, d.changed, d.unchanged, d.deleted) == (0, 0, 4, 1)
    assert full.deleted and full.deleted[0].endswith("/gamma.md")
    payloads = points("sync").values()
    assert sorted(p["path"] for p in payloads) == ["alpha.md", "beta.md", "delta.md", "epsilon.md"]
    assert not any("quarterly" in p["text"] for p in payloads)  # stale text of the edit is gone
    hits = search("how do I request a laptop", "sync", limit=5)
    assert all(h.path != "gamma.md" for h in hits)


def test_full_sync_is_scoped_to_its_source(prefect_server, home, tmp_path, points):
    a = write_docs(tmp_path / "docs" / "a", {"a1.md": "# A1\n\nApples.\n", "a2.md": "# A2\n\nApricots.\n"})
    b = write_docs(tmp_path / "docs" / "b", {"b1.md": "# B1\n\nBananas.\n"})
    ingest_documents(source=str(a), collection="scoped")
    ingest_documents(source=str(b), collection="scoped")
    (a / "a2.md").unlink()
    result = ingest_documents(source=str(a), collection="scoped", options=opts(mode="full"))
    assert result.documents.deleted == 1
    assert sorted(p["path"] for p in points("scoped").values()) == ["a1.md", "b1.md"]


def test_delete_guard_refuses_then_force_allows(prefect_server, home, tmp_path, points):
    docs = write_docs(tmp_path / "d", TOPICS)
    ingest_documents(source=str(docs), collection="guard")
    for name in ("alpha.md", "beta.md", "gamma.md"):
        (docs / name).unlink()
    refused = runner.invoke(app, ["ingest", str(docs), "-c", "guard", "--mode", "full", "--json"])
    assert refused.exit_code == 2
    assert "refusing to delete 3 of 4 documents (75%)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert len(points("guard")) == 4  # nothing deleted
    forced = runner.invoke(app, ["ingest", str(docs), "-c", "guard", "--mode", "full", "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["documents"]["deleted"] == 3
    assert [p["path"] for p in points("guard").values()] == ["delta.md"]


def test_poison_documents_fail_alone(prefect_server, home, tmp_path, monkeypatch, points):
    docs = write_docs(tmp_path / "d", TOPICS)
    depth = 50_000  # Docling hangs for minutes on this
    (docs / "deep.html").write_text("<html><body>" + "<div>" * depth + "deep" + "</div>" * depth + "</body></html>")
    (docs / "crash.md").write_text("# Crash\n\nThis one segfaults the parser.\n")
    (docs / "hog.md").write_text("# Hog\n\nThis one eats memory.\n")
    monkeypatch.setenv("DOCINGEST_FAULT", "segfault:crash.md")
    # 5 s a document: deep.html hangs for minutes; a small Markdown file took 0.15 s as a new parse worker's first
    # document (the converter built; 2 ms after that), so 5 s is over 30x.
    result = ingest_documents(source=str(docs), collection="poison",
                              options=opts(parse={"timeout_s": 5, "max_memory_mb": 1200}))
    failures = {f.source.rsplit("/", 1)[-1]: f.error for f in result.failures}
    assert set(failures) == {"deep.html", "crash.md"}
    assert failures["deep.html"].startswith("timeout: parsing took longer than 5 s")
    assert "parser crashed (killed by signal 11)" in failures["crash.md"]
    assert result.documents.new == 7 and result.chunks.upserted >= 5  # every other document made it (hog.md too)

    monkeypatch.setenv("DOCINGEST_FAULT", "hog:hog.md")
    (docs / "hog.md").write_text("# Hog\n\nThis one eats memory, for real this time.\n")
    # The hog grows 64 MB every 20 ms: past 1200 MB in under half a second, long before the time limit; the limit is
    # 15 s because deep.html (failed above, so tried again) spends all of it.
    result = ingest_documents(source=str(docs), collection="poison",
                              options=opts(parse={"timeout_s": 15, "max_memory_mb": 1200}))
    failures = {f.source.rsplit("/", 1)[-1]: f.error for f in result.failures}
    assert failures["hog.md"].startswith("memory limit: parser used")
    assert "hog.md" in {p["path"] for p in points("poison").values()}  # its previous version stays


def test_breaker_stops_a_run_that_mostly_fails(prefect_server, home, tmp_path, points):
    docs = tmp_path / "d"
    docs.mkdir()
    for i in range(40):  # more than the in-flight window (32): the rest must never be submitted
        (docs / f"bad{i:02}.docx").write_bytes(b"PK\x03\x04 broken")
    for i in range(10):
        (docs / f"good{i:02}.md").write_text(f"# Good {i}\n\nDocument number {i} is fine.\n")
    result = runner.invoke(app, ["ingest", str(docs), "-c", "breaker", "--json", "--breaker-min-docs", "6",
                                 "--max-failure-ratio", "0.5"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["aborted"].startswith("circuit breaker:")
    assert "circuit breaker" in result.stderr
    processed = data["documents"]["failed"] + data["chunks"]["upserted"]
    assert processed <= 32 + 6  # it stopped submitting new work once tripped
    assert data["chunks"]["upserted"] == 0
    stored = {p["path"] for p in points("breaker").values()}
    assert len(stored) == data["chunks"]["upserted"]  # what was written is complete and consistent


def test_concurrent_runs_on_one_scope_are_serialized(prefect_server, home, tmp_path, points):
    docs = write_docs(tmp_path / "d", TOPICS)
    results, errors = [], []

    def run():
        try:
            results.append(ingest_documents(source=str(docs), collection="concurrent"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    # Serialized: one run did the work, the other found everything unchanged; nothing duplicated.
    assert sorted(r.documents.new for r in results) == [0, 4]
    assert sorted(r.documents.unchanged for r in results) == [0, 4]
    assert len(points("concurrent")) == 4


def test_dead_letter_after_max_attempts(prefect_server, home, tmp_path):
    docs = write_docs(tmp_path / "d", {"ok.md": "# OK\n\nFine.\n"})
    (docs / "broken.pptx").write_bytes(b"PK\x03\x04 broken")
    o = opts(max_doc_attempts=2)
    first = ingest_documents(source=str(docs), collection="dlq", options=o)
    second = ingest_documents(source=str(docs), collection="dlq", options=o)
    assert first.documents.failed == second.documents.failed == 1 and second.documents.changed == 1
    third = ingest_documents(source=str(docs), collection="dlq", options=o)
    assert third.documents.changed == 0 and third.documents.failed == 1  # not retried any more
    assert third.documents.unchanged == 2 and third.chunks.embedded == 0
    assert [(d.source.rsplit("/", 1)[-1], d.attempts, d.stage) for d in third.dead_letter] == [
        ("broken.pptx", 2, "parse")
    ]
    (docs / "broken.pptx").write_bytes(b"PK\x03\x04 broken differently")  # a change gives it a new chance
    fourth = ingest_documents(source=str(docs), collection="dlq", options=o)
    assert fourth.documents.changed == 1 and not fourth.dead_letter


def test_run_summary_artifacts(prefect_server, home, tmp_path, caplog):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    docs = write_docs(tmp_path / "d", {"a.md": "# A\n\nText.\n"})
    (docs / "bad.docx").write_bytes(b"PK\x03\x04 nope")
    (docs / "empty.md").write_text("")
    (docs / "logo.xyz").write_text("?")
    with caplog.at_level("INFO"):
        result = ingest_documents(source=str(docs), collection="Art_Coll")
    # One WARNING line per document left out or failed, naming it and its reason.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum(m.startswith("failed bad.docx at parse: ") for m in warnings) == 1
    assert sum(m.startswith("skipped empty.md: empty document") for m in warnings) == 1
    assert sum(m.startswith("skipped logo.xyz: unsupported file type") for m in warnings) == 1
    assert {s.path for s in result.skipped} == {"empty.md", "logo.xyz"} and result.failures[0].path == "bad.docx"
    assert any("1 of the documents the plan counted as new or changed was skipped after reading" in r.getMessage()
               for r in caplog.records)
    with get_client(sync_client=True) as client:
        summary = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["docingest-art-coll-summary"])))
        table = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["docingest-art-coll-documents"])))
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["docingest-art-coll-progress"])))
    assert summary and "| 4 | 2 | 0 | 0 | 0 | 2 | 1 | 0 |" in summary[0].data  # seen, new, ..., skipped, failed
    rows = table[0].data if isinstance(table[0].data, list) else json.loads(table[0].data)
    assert [(r["document"].rsplit("/", 1)[-1], r["status"], r["stage"]) for r in rows][:1] == [
        ("bad.docx", "failure", "parse")]  # failures first
    assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0
    assert progress[0].description == "4 of 4 documents, 1 failed (Art_Coll)"


def test_a_held_scope_lock_times_out_with_one_line(tmp_path):
    from docingest.flows.locks import scope_lock
    from docingest.settings import DocingestSettings

    settings = DocingestSettings(home=tmp_path, prefect={"lock_timeout_s": 0.3})
    held = pytest.raises(TimeoutError, match="another run holds 'kb' / file:///docs")
    with scope_lock("kb", "file:///docs", settings), held, scope_lock("kb", "file:///docs", settings):
        pass
    with scope_lock("kb", "file:///docs", settings):  # released: taken again at once
        pass


def test_the_server_backend_syncs_the_same_way(prefect_server, home, tmp_path, monkeypatch, written_store):
    """The server backend (qdrant-client) runs the same sync: here on qdrant-client's local mode, the only stand-in
    for the server API that installs on these machines (no Qdrant server binary does)."""
    from docingest.settings import get_settings

    monkeypatch.setenv("DOCINGEST_QDRANT_ENGINE", "qdrant-client")
    get_settings.cache_clear()
    docs = write_docs(tmp_path / "d", TOPICS)
    first = ingest_documents(source=str(docs), collection="srv", options=opts(mode="full"))
    assert first.documents.new == 4 and first.ok
    assert (home / "qdrant" / "meta.json").is_file() and not (home / "qdrant" / "docingest-store.json").exists()
    assert ingest_documents(source=str(docs), collection="srv").documents.unchanged == 4
    (docs / "beta.md").write_text("# Beta\n\nBeta now covers the annual hardware refresh.\n")
    (docs / "delta.md").unlink()
    again = ingest_documents(source=str(docs), collection="srv", options=opts(mode="full"))
    assert (again.documents.changed, again.documents.deleted, again.documents.unchanged) == (1, 1, 2)
    store = written_store(engine="qdrant-client")
    assert sorted(p["payload"]["path"] for p in store.points("srv")) == ["alpha.md", "beta.md", "gamma.md"]
    assert search("hardware refresh", "srv", limit=1)[0].path == "beta.md"


def test_the_run_that_grows_a_collection_enough_builds_its_index_and_says_so(prefect_server, home, tmp_path,
                                                                            monkeypatch, caplog):
    from docingest.settings import get_settings

    monkeypatch.setenv("DOCINGEST_INDEX_FROM_POINTS", "3")
    get_settings.cache_clear()
    docs = write_docs(tmp_path / "d", TOPICS)
    with caplog.at_level("INFO"):
        result = ingest_documents(source=str(docs), collection="idx")
    assert result.chunks.upserted == 4 and "index" in result.stage_seconds
    assert any("built the vector index of idx__v1 (4 points)" in r.getMessage() for r in caplog.records)
    unchanged = ingest_documents(source=str(docs), collection="idx")
    assert "index" not in unchanged.stage_seconds  # nothing written: no upkeep
