"""Hybrid retrieval through the flow and the CLI: every chunk gets a BM25 vector; an exact term nobody's embedding
understands is found by bm25 and hybrid search; a dense-only collection gains BM25 vectors without re-embedding."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from docingest.cli import app
from docingest.flows.ingest import ingest_documents
from docingest.options import IngestOptions
from docingest.retrieval import search

pytestmark = [pytest.mark.integration, pytest.mark.slow]
runner = CliRunner()

DOCS = {
    "ledger.md": "# Quarterly ledger reconciliation\n\nFinance closes the quarter by matching every invoice to a "
                 "purchase order. Discrepancies above one hundred euros go to the controller, who signs them off "
                 "before the books are locked. Ticket XQ-77-ZEBRA tracks the missing signature on the March batch; "
                 "the auditors asked for it to be closed before the annual report.\n",
    "horses.md": "# Striped horses of the savanna\n\nA herd of seventy-seven striped wild horses crossed the river at "
                 "dawn. Their black and white stripes confuse biting flies, and each animal has a unique pattern.\n",
    "codes.md": "# Product codes\n\nProduct codes combine two letters, a number and an animal name, for example "
                "XR-12-LION or QX-88-TIGER.\n",
    "travel.md": "# Travel policy\n\nTrain travel is preferred for trips under five hours. Book hotels through the "
                 "portal.\n",
}


def write(folder, docs):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text)
    return folder


def test_an_exact_code_is_found_by_bm25_and_hybrid_but_not_by_dense(prefect_server, home, tmp_path, written_store):
    docs = write(tmp_path / "d", DOCS)
    result = ingest_documents(source=str(docs), collection="codes")
    assert result.ok and result.chunks.upserted == 4
    store = written_store()
    assert store.sparse_vectors("codes") == {"bm25"}
    points = list(store.points("codes", with_vectors=True))
    assert all(p["payload"]["sparse_model"] == "bm25:english" and p["vector"]["bm25"]["indices"] for p in points)

    by_mode = {mode: search("XQ-77-ZEBRA", "codes", limit=3, mode=mode) for mode in ("dense", "bm25", "hybrid")}
    assert by_mode["dense"][0].path != "ledger.md"  # the embedding sees letters, a number and an animal
    assert by_mode["bm25"][0].path == "ledger.md" and len(by_mode["bm25"]) == 1  # only it holds the terms
    assert by_mode["hybrid"][0].path == "ledger.md"
    assert [r.mode for r in by_mode.values()] == ["dense", "bm25", "hybrid"]
    assert search("XQ-77-ZEBRA", "codes", limit=3).mode == "hybrid"  # the default on a collection with BM25
    assert search("XQ-77-ZEBRA", "codes", limit=3, mode="hybrid", fusion="dbsf")[0].path == "ledger.md"

    done = runner.invoke(app, ["search", "XQ-77-ZEBRA", "-c", "codes", "--json"])
    assert done.exit_code == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["mode"] == "hybrid" and data["hits"][0]["path"] == "ledger.md"
    assert set(data["hits"][0]) == {"score", "source", "path", "chunk_index", "text", "headings"}  # as before
    bad = runner.invoke(app, ["search", "x", "-c", "codes", "--fusion", "max"])
    assert bad.exit_code == 2 and "unknown fusion" in bad.stderr


def test_a_dense_only_collection_gains_bm25_vectors_at_its_next_sync_without_re_embedding(prefect_server, home,
                                                                                           tmp_path, written_store):
    docs = write(tmp_path / "d", DOCS)
    dense_only = IngestOptions.model_validate({"store": {"bm25_language": "none"}})
    first = ingest_documents(source=str(docs), collection="old", options=dense_only)
    assert first.chunks.embedded == 4
    store = written_store()
    assert store.sparse_vectors("old") == set()
    before = {p["id"]: p["vector"][""] for p in store.points("old", with_vectors=True)}

    done = runner.invoke(app, ["search", "XQ-77-ZEBRA", "-c", "old", "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["mode"] == "dense"
    assert done.stderr.count("has no BM25 vectors yet") == 1  # said once, on stderr
    assert runner.invoke(app, ["search", "XQ-77-ZEBRA", "-c", "old", "--mode", "bm25"]).exit_code == 2

    upgraded = ingest_documents(source=str(docs), collection="old")
    assert upgraded.chunks.embedded == 0 and upgraded.chunks.upserted == 0
    assert upgraded.chunks.sparse_added == 4 and upgraded.documents.unchanged == 4
    after = {p["id"]: p for p in store.points("old", with_vectors=True)}
    assert {i: p["vector"][""] for i, p in after.items()} == before  # the same points, dense vectors untouched
    assert all(p["payload"]["sparse_model"] == "bm25:english" for p in after.values())
    assert search("XQ-77-ZEBRA", "old", limit=1, mode="bm25")[0].path == "ledger.md"
    assert ingest_documents(source=str(docs), collection="old").chunks.sparse_added == 0  # once only

    german = IngestOptions.model_validate({"store": {"bm25_language": "german"}})
    relabelled = ingest_documents(source=str(docs), collection="old", options=german)
    assert (relabelled.chunks.embedded, relabelled.chunks.sparse_added) == (0, 4)  # another language: sparse only
    assert runner.invoke(app, ["ingest", str(docs), "-c", "old", "--bm25-language", "klingon"]).exit_code == 2
