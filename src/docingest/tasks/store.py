"""Qdrant writes: upsert a batch of points, then finish documents (drop old versions, record the manifest)."""

from __future__ import annotations

from typing import Any

from docingest.core.store import Maintenance, QdrantLocation, QdrantStore
from docingest.datamodel import ManifestRecord
from docingest.tasks.common import STORE_TAGS, count, stage_task


def _store_task(name: str, describe):
    return stage_task(name, describe, STORE_TAGS, retries=3)


@_store_task("ensure-collection", lambda p: f"ensure collection {p['collection']}")
def ensure_collection_task(location: QdrantLocation, collection: str, dimension: int, sparse: tuple[str, ...] = ()
                           ) -> str:
    """Create the collection (behind its alias) with the model's dimension and cosine distance (and the named sparse
    vectors), or check it fits; returns the physical collection the run writes to."""
    return QdrantStore(location).ensure_collection(collection, dimension, sparse=sparse)


@_store_task("sparse-vectors", lambda p: f"BM25 vectors of {p['collection']}")
def sparse_vectors_task(location: QdrantLocation, collection: str, language: str) -> int | None:
    """Give stored points that lack it a BM25 vector of ``language``, from their stored text (never re-embeds);
    None when this Qdrant cannot add the sparse vector to the existing collection."""
    from docingest.core.sparse import add_sparse_vectors

    return add_sparse_vectors(QdrantStore(location), collection, language)


@_store_task("upsert", lambda p: f"upsert {count(len(p['points']), 'point')}")
def upsert_points_task(location: QdrantLocation, collection: str, points: list[dict[str, Any]], batch_size: int) -> int:
    """Write the new versions' points (ids are deterministic, so a retry overwrites, never duplicates)."""
    return QdrantStore(location).upsert(collection, points, batch_size)


@_store_task("finalize", lambda p: f"finalize {count(len(p['records']), 'document')}")
def finalize_documents_task(
    location: QdrantLocation, collection: str, replace: list[tuple[str, str | None]], records: list[ManifestRecord]
) -> int:
    """After the new versions are written: remove each document's other versions, then record the manifest.

    A ``(doc_id, None)`` entry removes every version (the document became empty), and its manifest record too
    unless ``records`` holds a new one for it (a skip record).
    """
    store = QdrantStore(location)
    deleted = store.delete_other_versions_many(collection, replace)
    store.write_manifest(collection, records)
    recorded = {r.doc_id for r in records}
    store.delete_manifest(collection, [doc_id for doc_id, keep in replace if keep is None and doc_id not in recorded])
    return deleted


@_store_task("delete-documents", lambda p: f"delete {count(len(p['records']), 'document')}")
def delete_documents_task(location: QdrantLocation, collection: str, records: list[ManifestRecord]) -> int:
    """Full sync: remove documents that vanished from the source (all their points, then their manifest records)."""
    from docingest.core import faults

    store = QdrantStore(location)
    deleted = 0
    for record in records:
        deleted += store.delete_other_versions(collection, record.doc_id, None)
        store.delete_manifest(collection, [record.doc_id])
        faults.checkpoint("mid-delete")
    return deleted


@_store_task("maintain", lambda p: f"maintain {p['collection']}")
def maintain_collection_task(location: QdrantLocation, collection: str) -> Maintenance:
    """End of a run: flush the embedded store, and build the collection's HNSW index once enough of its points are
    not indexed yet (a server indexes on its own)."""
    return QdrantStore(location).maintain(collection)
