"""Qdrant writes: a pool of embedded documents (upsert, then finish: drop old versions, record the manifest), records
of skipped or failed documents, deletions and upkeep."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from docingest.core.plan import Profile
from docingest.core.store import Maintenance, QdrantLocation, QdrantStore
from docingest.core.write import EmbeddedPool, WrittenPool, finalize_documents, write_pool
from docingest.datamodel import ManifestRecord
from docingest.tasks.common import STORE_TAGS, count, stage_task

if TYPE_CHECKING:
    from prefect import Task

P = ParamSpec("P")
R = TypeVar("R")


def _store_task(name: str, describe: Callable[[dict], str]) -> Callable[[Callable[P, R]], Task[P, R]]:
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


@_store_task("write", lambda p: f"upsert {count(p['pool'].chunks, 'point')} and finalize "
                               f"{count(len(p['pool'].docs) + len(p['pool'].failed), 'document')}")
def write_pool_task(location: QdrantLocation, collection: str, pool: EmbeddedPool, profile: Profile,
                    known: dict[str, ManifestRecord], batch_size: int) -> WrittenPool:
    """Upsert an embedded pool's points, then finish its documents (old versions removed, manifest recorded); safe to
    retry whole (deterministic ids)."""
    return write_pool(QdrantStore(location), collection, pool, profile, known, batch_size)


@_store_task("finalize", lambda p: f"finalize {count(len(p['records']), 'document')}")
def finalize_documents_task(
    location: QdrantLocation, collection: str, replace: list[tuple[str, str | None]], records: list[ManifestRecord]
) -> int:
    """Record documents that were skipped or failed (and drop the old versions of those that became empty)."""
    return finalize_documents(QdrantStore(location), collection, replace, records)


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
