"""QdrantStore: collections behind aliases, chunk points, the per-document manifest and search, written once over a
backend (Qdrant Edge in the process, or a Qdrant server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from docingest.core.store.backend import Backend, Maintenance, QdrantLocation, Record, Search, StoredPoint, Where
from docingest.datamodel import ManifestRecord, SearchHit
from docingest.exceptions import ConfigurationError, UnknownCollectionError

MANIFEST_SUFFIX = "__manifest"
# The fields the sync filters by: chunks by doc_id (a document's versions) and sparse_model (points without BM25
# vectors), manifests by source_uri. Each keyword index is loaded when an embedded shard opens (~0.19 s per field at
# 200,000 points), so no more than these.
PAYLOAD_INDEXES = ("doc_id", "source_uri", "sparse_model")

_backends: dict[tuple, Backend] = {}
_backends_lock = threading.Lock()
_creating = threading.Lock()  # two runs of this process may create or extend one collection at once (two uploads)


def open_backend(location: QdrantLocation) -> Backend:
    """One backend per location and process (an embedded store is held by one process, and opened once in it)."""
    key = location.cache_key()
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            if location.url or location.engine == "qdrant-client":
                from docingest.core.store.client import ClientBackend

                backend = ClientBackend(location)
            else:
                from docingest.core.store.edge import EdgeBackend

                backend = EdgeBackend(location)
            if not _backends:  # closed while the interpreter still works (flushes, releases the folder's lock)
                import atexit

                atexit.register(close_backends)
            _backends[key] = backend
        return backend


def is_open(location: QdrantLocation) -> bool:
    """Whether this process already holds the backend of ``location`` open."""
    with _backends_lock:
        return location.cache_key() in _backends


def close_backends() -> None:
    """Close every open backend: flushes embedded shards and releases their folders for other processes."""
    with _backends_lock:
        for backend in _backends.values():
            try:
                backend.close()
            except Exception:  # noqa: BLE001
                pass
        _backends.clear()


def _as_list(vector: Any) -> list[float]:
    return vector.tolist() if hasattr(vector, "tolist") else list(vector)


class QdrantStore:
    """Chunks and manifest records of collections in one Qdrant."""

    def __init__(self, location: QdrantLocation) -> None:
        self.location = location
        self.backend = open_backend(location)

    def manifest_name(self, collection: str) -> str:
        """The manifest of a collection (of the physical collection, when ``collection`` is an alias)."""
        return f"{self.resolve(collection)}{MANIFEST_SUFFIX}"

    def aliases(self) -> dict[str, str]:
        """Alias -> the collection it points at."""
        return self.backend.aliases()

    def resolve(self, name: str) -> str:
        """The physical collection behind ``name`` (an alias), or ``name`` itself."""
        return self.aliases().get(name, name)

    def collection_exists(self, collection: str) -> bool:
        """Whether a collection or an alias of that name exists."""
        return self.backend.collection_exists(self.resolve(collection))

    def ensure_collection(self, collection: str, dimension: int, alias: bool = True, sparse: tuple[str, ...] = ()
                          ) -> str:
        """The physical collection behind ``collection``, created when missing: ``<name>__v1`` (cosine, the model's
        dimension, and the named ``sparse`` vectors with IDF) behind the alias ``<name>`` (so a model migration can
        switch it atomically), or with ``alias=False`` a collection of that very name. Also creates its manifest.
        Checks the dimension fits."""
        if (not collection or any(c in collection for c in "/\\ ") or collection.startswith(".")
                or collection.endswith(MANIFEST_SUFFIX)):
            raise ConfigurationError(f"invalid collection name: {collection!r}")
        with _creating:
            physical = self._ensure(collection, dimension, alias, sparse)
            manifest = self.manifest_name(physical)
            if not self.backend.collection_exists(manifest):
                self.backend.create_collection(manifest, 1, "dot", PAYLOAD_INDEXES)
        return physical

    def _ensure(self, collection: str, dimension: int, alias: bool, sparse: tuple[str, ...]) -> str:
        physical = self.resolve(collection)
        if self.backend.collection_exists(physical):
            size = self.backend.vector_size(physical)
            if size is not None and size != dimension:
                raise ConfigurationError(
                    f"collection {collection!r} holds {size}-dimensional vectors but the model makes {dimension}: "
                    "use the model it was built with, or change its model with `docingest migrate`"
                )
        else:
            physical = f"{collection}__v1" if alias else collection
            self.backend.create_collection(physical, dimension, "cosine", PAYLOAD_INDEXES, sparse)
            if alias:
                self.switch_alias(collection, physical)
        return physical

    def switch_alias(self, alias: str, target: str) -> None:
        """Point ``alias`` at ``target`` in one atomic operation (readers see the old or the new collection)."""
        self.backend.switch_alias(alias, target)

    def drop_collection(self, physical: str) -> None:
        """Delete a physical collection and its manifest."""
        for name in (physical, self.manifest_name(physical)):
            if self.backend.collection_exists(name):
                self.backend.delete_collection(name)

    def source_uris(self, collection: str) -> list[str]:
        """The sources recorded in a collection's manifest."""
        found: set[str] = set()
        for record in self._scroll(self.manifest_name(collection), payload=["source_uri"]):
            if record.payload.get("source_uri"):
                found.add(record.payload["source_uri"])
        return sorted(found)

    def require_collection(self, collection: str) -> None:
        if not self.collection_exists(collection):
            raise UnknownCollectionError(f"unknown collection: {collection!r} (ingest into it first)")

    def _scroll(self, name: str, where: Where | None = None, payload: bool | list[str] = True,
                vectors: bool = False, page: int = 1000) -> Iterator[Record]:
        offset = None
        while True:
            records, offset = self.backend.scroll(name, where, limit=page, offset=offset, payload=payload,
                                                  vectors=vectors)
            yield from records
            if offset is None:
                return

    def manifest(self, collection: str, source_uri: str) -> dict[str, ManifestRecord]:
        """Manifest records of one source, by document path."""
        records: dict[str, ManifestRecord] = {}
        for point in self._scroll(self.manifest_name(collection), Where(must={"source_uri": source_uri})):
            record = ManifestRecord.model_validate(point.payload)
            records[record.path] = record
        return records

    def write_manifest(self, collection: str, records: list[ManifestRecord]) -> None:
        if records:
            self.backend.upsert(self.manifest_name(collection),
                                [StoredPoint(r.doc_id, [1.0], r.model_dump(mode="json")) for r in records])

    def delete_manifest(self, collection: str, doc_ids: list[str]) -> None:
        if doc_ids:
            self.backend.delete_ids(self.manifest_name(collection), doc_ids)

    def upsert(self, collection: str, points: list[dict[str, Any]], batch_size: int = 256) -> int:
        """Write points ({id, vector, payload[, sparse: {name: (indices, values)}]}); returns how many."""
        for start in range(0, len(points), batch_size):
            self.backend.upsert(collection, [StoredPoint(p["id"], _as_list(p["vector"]), p["payload"],
                                                         p.get("sparse") or {})
                                             for p in points[start:start + batch_size]])
        return len(points)

    def sparse_vectors(self, collection: str) -> set[str]:
        """The named sparse vectors the collection holds (an empty set for a dense-only collection)."""
        return self.backend.sparse_vectors(self.resolve(collection))

    def add_sparse_vector(self, physical: str, vector: str) -> bool:
        """Give an existing collection the sparse vector ``vector``; False where the backend cannot."""
        with _creating:
            if vector in self.backend.sparse_vectors(physical):
                return True
            try:
                self.backend.add_sparse_vector(physical, vector)
            except ConfigurationError:
                return False
            return True

    def without_sparse(self, physical: str, model: str, page: int = 256) -> Iterator[list[tuple[str, dict]]]:
        """Pages of (point id, payload with headings and text) of the points whose sparse vector was not made by
        ``model`` (none yet, or another language)."""
        offset = None
        where = Where(must_not={"sparse_model": model})
        while True:
            records, offset = self.backend.scroll(physical, where, limit=page, offset=offset,
                                                  payload=["text", "headings"])
            if records:
                yield [(r.id, r.payload) for r in records]
            if offset is None:
                return

    def set_sparse(self, physical: str, vector: str, model: str,
                   items: list[tuple[str, list[int], list[float]]]) -> None:
        """Store points' sparse vectors (and which model made them), leaving their dense vectors as they are."""
        if items:
            self.backend.set_sparse(physical, vector, items, {"sparse_model": model})

    def delete_other_versions(self, collection: str, doc_id: str, keep_version: str | None) -> int:
        """Remove a document's points of every version but ``keep_version`` (all of them if None)."""
        where = Where(must={"doc_id": doc_id}, must_not={"version": keep_version} if keep_version else {})
        count = self.backend.count(collection, where)
        if count:
            self.backend.delete_where(collection, where)
        return count

    def delete_other_versions_many(self, collection: str, replace: list[tuple[str, str | None]]) -> int:
        """``delete_other_versions`` for many documents at once: one filtered scroll over the documents' points
        (``doc_id`` in the batch) and one delete by point id, instead of a count and a delete per document."""
        keep = dict(replace)
        stale: list[str] = []
        ids = list(keep)
        for start in range(0, len(ids), 1000):
            for point in self._scroll(collection, Where(must={"doc_id": ids[start:start + 1000]}),
                                      payload=["doc_id", "version"]):
                wanted = keep.get(point.payload.get("doc_id"))  # type: ignore[arg-type]  # a point without one: None
                if wanted is None or point.payload.get("version") != wanted:
                    stale.append(point.id)
        for start in range(0, len(stale), 1000):
            self.backend.delete_ids(collection, stale[start:start + 1000])
        return len(stale)

    def list_collections(self) -> list[str]:
        """Every collection's name (physical names; aliases are in :meth:`aliases`)."""
        return self.backend.list_collections()

    def sparse_language(self, collection: str) -> str | None:
        """The BM25 language of the collection's sparse vectors (recorded in its points), if they have any."""
        records, _ = self.backend.scroll(collection, limit=1, payload=["sparse_model"])
        model = records[0].payload.get("sparse_model") if records else None
        return model.split(":", 1)[1] if model and model.startswith("bm25:") else None

    def collection_model(self, collection: str) -> tuple[str | None, str]:
        """The embedding model and backend recorded in the collection's points, if any."""
        records, _ = self.backend.scroll(collection, limit=1, payload=["model", "model_backend"])
        payload = records[0].payload if records else {}
        return payload.get("model"), payload.get("model_backend") or "torch"

    def points(self, collection: str, with_vectors: bool = False, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every point of a collection, ``{"id", "payload", "vector"}``, read a page at a time (constant memory)."""
        for record in self._scroll(collection, vectors=with_vectors, page=page):
            yield {"id": record.id, "payload": record.payload, "vector": record.vector}

    def query(self, collection: str, vector: list[float], limit: int = 5) -> list[tuple[float, dict[str, Any]]]:
        """The ``limit`` nearest points by the dense vector: (score, payload) pairs, best first."""
        return self.backend.query(collection, Search(limit=limit, dense=_as_list(vector)))

    def find(self, collection: str, search: Search) -> list[tuple[float, dict[str, Any]]]:
        """Dense, sparse or fused (both given) query: (score, payload) pairs, best first."""
        return self.backend.query(collection, search)

    def count(self, collection: str) -> int:
        return self.backend.count(collection)

    def maintain(self, collection: str) -> Maintenance:
        """End of a run: flush, and build the collection's vector index when it has grown enough to need one."""
        return self.backend.maintain(collection)

    def search(self, collection: str, vector: list[float] | Search, limit: int = 5) -> list[SearchHit]:
        self.require_collection(collection)
        search = vector if isinstance(vector, Search) else Search(limit=limit, dense=_as_list(vector))
        return [
            SearchHit(
                score=score,
                source=payload.get("uri") or payload.get("source_uri", ""),
                path=payload.get("path", ""),
                chunk_index=int(payload.get("chunk_index", 0)),
                text=payload.get("text", ""),
                headings=list(payload.get("headings") or []),
                pages=list(payload.get("pages") or []),
            )
            for score, payload in self.find(collection, search)
        ]
