"""A re-sync with nothing to write is answered from the plan (the CLI on Prefect's temporary API): which plans qualify,
the result it gives, and the BM25 check it needs (a collection from before hybrid search must get a flow run)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from docingest.core.plan import Action, Plan, PlannedDocument
from docingest.core.sparse import SPARSE_VECTOR, encoder, sparse_complete
from docingest.core.store import QdrantLocation
from docingest.datamodel import ChangeKind, DocumentStatus, ManifestRecord, SourceDocument
from docingest.flows.planning import nothing_to_write
from docingest.options import IngestOptions, SyncMode

pytestmark = pytest.mark.unit

SOURCE = "file:///data/docs"


def planned(path: str, action: Action, chunks: int = 2, reason: str | None = None, listing_skip: bool = False,
            attempts: int = 0) -> PlannedDocument:
    doc = SourceDocument(source_uri=SOURCE, path=path, uri=f"{SOURCE}/{path}", size=10, content_hash="h",
                         skip_reason=reason if listing_skip else None)
    known = None if action is Action.SKIP and not chunks else ManifestRecord(
        doc_id=path, source_uri=SOURCE, path=path, uri=doc.uri, content_hash="h", fingerprint="f", version="v",
        status=DocumentStatus.FAILURE if action is Action.DEAD_LETTER else DocumentStatus.SUCCESS, chunks=chunks,
        error="boom" if attempts else None, attempts=attempts)
    change = ChangeKind.NEW if known is None else ChangeKind.UNCHANGED
    return PlannedDocument(doc, change, action, known, reason)


def spec(tmp_path, exists: bool = True, sparse_language: str | None = None):
    # A location, not a store: nothing_to_write opens the store itself from the flow's spec, as the flow does.
    return SimpleNamespace(exists=exists, collection="handbook", physical="handbook__v1",
                           location=QdrantLocation(path=tmp_path / "q", engine="edge"),
                           source=SimpleNamespace(uri=SOURCE), options=IngestOptions(),
                           profile=SimpleNamespace(sparse_language=sparse_language))


def plan(*documents: PlannedDocument, deleted: list[ManifestRecord] | None = None) -> Plan:
    return Plan(scope=SOURCE, mode=SyncMode.INCREMENTAL, documents=list(documents), deleted=deleted or [])


def test_unchanged_skipped_and_dead_lettered_documents_give_the_flows_result_without_a_run(tmp_path):
    result = nothing_to_write(spec(tmp_path), plan(
        planned("a.md", Action.UNCHANGED), planned("b.md", Action.UNCHANGED, chunks=3),
        planned("logo.bin", Action.SKIP, chunks=0, reason="unsupported format"),
        planned("old.pptx", Action.DEAD_LETTER, attempts=3, reason="failed 3 times")))
    assert result is not None and result.flow_run_id == "" and result.mode == "incremental"
    d = result.documents
    assert (d.seen, d.unchanged, d.skipped, d.failed, d.new, d.changed) == (4, 3, 1, 1, 0, 0)
    assert [s.path for s in result.skipped] == ["logo.bin"] and result.skipped[0].reason == "unsupported format"
    assert [(x.source, x.attempts) for x in result.dead_letter] == [(f"{SOURCE}/old.pptx", 3)]
    assert result.chunks.embedded == result.chunks.upserted == 0 and not result.ok  # a dead letter fails the run


@pytest.mark.parametrize("case", ["process", "delete", "indexed-link-now-skipped", "new-collection"])
def test_a_plan_with_something_to_write_needs_a_flow_run(tmp_path, case):
    documents = [planned("a.md", Action.UNCHANGED)]
    deleted = None
    if case == "process":
        documents.append(planned("b.md", Action.PROCESS))
    elif case == "delete":
        deleted = [documents[0].known.model_copy(update={"path": "gone.md", "doc_id": "gone.md"})]
    elif case == "indexed-link-now-skipped":  # its chunks must be removed, which the writer does
        documents.append(planned("link.md", Action.SKIP, chunks=4, reason="a link out of the source",
                                 listing_skip=True))
    assert nothing_to_write(spec(tmp_path, exists=case != "new-collection"), plan(*documents, deleted=deleted)) is None


def test_missing_bm25_vectors_need_a_flow_run(tmp_path, monkeypatch):
    import docingest.core.sparse as sparse

    checked = []
    monkeypatch.setattr(sparse, "sparse_complete", lambda store, physical, language: checked.append(language))
    assert nothing_to_write(spec(tmp_path, sparse_language="english"), plan(planned("a.md", Action.UNCHANGED))) \
        is None
    assert checked == ["english"]


def test_sparse_complete_reads_the_collection_and_each_points_bm25_language(store_factory):
    store = store_factory("edge")
    dense_only = store.ensure_collection("dense", 3)
    assert not sparse_complete(store, dense_only, "english")  # no sparse vector at all: a flow run adds it

    physical = store.ensure_collection("hybrid", 3, sparse=(SPARSE_VECTOR,))
    assert sparse_complete(store, physical, "english")  # empty
    (indices, values), = encoder().documents(["valves are replaced every two years"])
    point = {"id": str(uuid.uuid4()), "vector": [1.0, 0.0, 0.0],
             "sparse": {SPARSE_VECTOR: (indices, values)}, "payload": {"text": "valves", "sparse_model": None}}
    for model, complete in (("bm25:english", True), ("bm25:german", False)):
        store.upsert(physical, [{**point, "payload": {**point["payload"], "sparse_model": model}}])
        assert sparse_complete(store, physical, "english") is complete
