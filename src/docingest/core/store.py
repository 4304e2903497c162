"""Store: Qdrant collections, points and the per-document manifest, the same API in local mode and on a server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, SecretStr

from docingest.datamodel import ManifestRecord, SearchHit
from docingest.exceptions import ConfigurationError, StoreError

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

MANIFEST_SUFFIX = "__manifest"
PAYLOAD_INDEXES = ("doc_id", "source_uri", "version", "path")


class QdrantLocation(BaseModel):
    """Where Qdrant lives: a server URL, or a folder for local (embedded) mode."""

    url: str | None = Field(default=None, description="Server URL, e.g. http://localhost:6333.")
    path: Path | None = Field(default=None, description="Folder for local mode (used when no URL is given).")
    api_key: SecretStr | None = Field(default=None, description="API key for a server.")
    timeout: float = Field(default=30.0, description="Request timeout in seconds.")
    prefer_grpc: bool = Field(default=False, description="Use gRPC for a server.")

    def describe(self) -> str:
        return self.url if self.url else f"local:{self.path}"

    def cache_key(self) -> tuple:
        return (self.url, str(self.path.resolve()) if self.path else None, self.prefer_grpc)


_clients: dict[tuple, QdrantClient] = {}
_client_locks: dict[tuple, threading.RLock] = {}
_clients_lock = threading.Lock()


def get_client(location: QdrantLocation) -> QdrantClient:
    """One client per location and process (local mode allows only one client per folder)."""
    from qdrant_client import QdrantClient

    key = location.cache_key()
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        api_key = location.api_key.get_secret_value() if location.api_key else None
        try:
            if location.url:
                client = QdrantClient(
                    url=location.url, api_key=api_key, timeout=int(location.timeout), prefer_grpc=location.prefer_grpc
                )
            else:
                if location.path is None:
                    raise ConfigurationError("no Qdrant location: set DOCINGEST_QDRANT_URL or DOCINGEST_QDRANT_PATH")
                location.path.mkdir(parents=True, exist_ok=True)
                client = QdrantClient(path=str(location.path))
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise ConfigurationError(
                    f"Qdrant local storage {location.path} is in use by another process; "
                    "wait for it, or use a Qdrant server (--qdrant-url)"
                ) from exc
            raise
        if not _clients:  # closed while the interpreter still works: a client left to __del__ at exit complains
            import atexit

            atexit.register(close_clients)
        _clients[key] = client
        _client_locks[key] = threading.RLock()
        return client


def _client_lock(location: QdrantLocation) -> threading.RLock:
    """One lock per client, shared by every QdrantStore on it (local mode is not safe across threads)."""
    with _clients_lock:
        return _client_locks.setdefault(location.cache_key(), threading.RLock())


def close_clients() -> None:
    """Close every cached client (releases local-mode folder locks)."""
    with _clients_lock:
        for client in _clients.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
        _clients.clear()


def _as_list(vector: Any) -> list[float]:
    return vector.tolist() if hasattr(vector, "tolist") else list(vector)


def _wrap(where: str, action: str, exc: Exception) -> StoreError:
    return StoreError(f"Qdrant at {where}: {action} failed: {type(exc).__name__}: {exc}")


class QdrantStore:
    """Chunks and manifest records of collections in one Qdrant."""

    def __init__(self, location: QdrantLocation) -> None:
        self.location = location
        self._client = get_client(location)
        self._lock = _client_lock(location)
        self.is_local = not location.url

    def manifest_name(self, collection: str) -> str:
        """The manifest of a collection (of the physical collection, when ``collection`` is an alias)."""
        return f"{self.resolve(collection)}{MANIFEST_SUFFIX}"

    def _call(self, action: str, fn, *args, **kwargs):
        try:
            with self._lock:
                return fn(*args, **kwargs)
        except (ConfigurationError, StoreError):
            raise
        except ValueError as exc:  # local mode raises ValueError for a missing collection
            raise ConfigurationError(f"Qdrant {action}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - network and server errors are transient
            raise _wrap(self.location.describe(), action, exc) from exc

    def aliases(self) -> dict[str, str]:
        """Alias -> the collection it points at."""
        response = self._call("read aliases", self._client.get_aliases)
        return {a.alias_name: a.collection_name for a in response.aliases}

    def resolve(self, name: str) -> str:
        """The physical collection behind ``name`` (an alias), or ``name`` itself."""
        return self.aliases().get(name, name)

    def collection_exists(self, collection: str) -> bool:
        """Whether a collection or an alias of that name exists."""
        return bool(self._call("check collection", self._client.collection_exists, self.resolve(collection)))

    def ensure_collection(self, collection: str, dimension: int, alias: bool = True) -> str:
        """The physical collection behind ``collection``, created when missing: ``<name>__v1`` (cosine, the model's
        dimension) behind the alias ``<name>`` (so a model migration can switch it atomically), or with
        ``alias=False`` a collection of that very name. Also creates its manifest. Checks the dimension fits."""
        from qdrant_client import models

        if not collection or any(c in collection for c in "/\\ ") or collection.endswith(MANIFEST_SUFFIX):
            raise ConfigurationError(f"invalid collection name: {collection!r}")
        physical = self.resolve(collection)
        if self._call("check collection", self._client.collection_exists, physical):
            info = self._call("read collection", self._client.get_collection, physical)
            vectors = info.config.params.vectors
            size = getattr(vectors, "size", None)
            if size is not None and size != dimension:
                raise ConfigurationError(
                    f"collection {collection!r} holds {size}-dimensional vectors but the model makes {dimension}: "
                    "use the model it was built with, or change its model with `docingest migrate`"
                )
        else:
            physical = f"{collection}__v1" if alias else collection
            self._call(
                "create collection",
                self._client.create_collection,
                physical,
                vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
            )
            self._index(physical)
            if alias:
                self.switch_alias(collection, physical)
        self._ensure_manifest(physical)
        return physical

    def switch_alias(self, alias: str, target: str) -> None:
        """Point ``alias`` at ``target`` in one atomic operation (readers see the old or the new collection)."""
        from qdrant_client import models

        ops: list = []
        if alias in self.aliases():
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target,
                                                                               alias_name=alias)))
        self._call("switch alias", self._client.update_collection_aliases, change_aliases_operations=ops)

    def drop_collection(self, physical: str) -> None:
        """Delete a physical collection and its manifest."""
        for name in (physical, self.manifest_name(physical)):
            if self._call("check collection", self._client.collection_exists, name):
                self._call("delete collection", self._client.delete_collection, name)

    def _ensure_manifest(self, physical: str) -> None:
        from qdrant_client import models

        manifest = self.manifest_name(physical)
        if not self.collection_exists(manifest):
            self._call(
                "create manifest",
                self._client.create_collection,
                manifest,
                vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT),
            )
            self._index(manifest)

    def _index(self, collection: str) -> None:
        from qdrant_client import models

        if self.is_local:  # payload indexes have no effect in local mode
            return
        for field in PAYLOAD_INDEXES:
            self._call(
                "create index",
                self._client.create_payload_index,
                collection,
                field_name=field,
                field_schema=models.PayloadSchemaType.KEYWORD,
            )

    def source_uris(self, collection: str) -> list[str]:
        """The sources recorded in a collection's manifest."""
        found: set[str] = set()
        offset = None
        while True:
            points, offset = self._call("read manifest", self._client.scroll, self.manifest_name(collection),
                                        limit=1000, offset=offset, with_payload=["source_uri"], with_vectors=False)
            found.update(p.payload["source_uri"] for p in points if p.payload and p.payload.get("source_uri"))
            if offset is None:
                return sorted(found)

    def require_collection(self, collection: str) -> None:
        if not self.collection_exists(collection):
            raise ConfigurationError(f"unknown collection: {collection!r} (ingest into it first)")

    def manifest(self, collection: str, source_uri: str) -> dict[str, ManifestRecord]:
        """Manifest records of one source, by document path."""
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key="source_uri", match=models.MatchValue(value=source_uri))])
        records: dict[str, ManifestRecord] = {}
        offset = None
        while True:
            points, offset = self._call(
                "read manifest",
                self._client.scroll,
                self.manifest_name(collection),
                scroll_filter=flt,
                limit=1000,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
            for point in points:
                record = ManifestRecord.model_validate(point.payload)
                records[record.path] = record
            if offset is None:
                return records

    def write_manifest(self, collection: str, records: list[ManifestRecord]) -> None:
        from qdrant_client import models

        if not records:
            return
        points = [models.PointStruct(id=r.doc_id, vector=[1.0], payload=r.model_dump(mode="json")) for r in records]
        self._call("write manifest", self._client.upsert, self.manifest_name(collection), points=points, wait=True)

    def delete_manifest(self, collection: str, doc_ids: list[str]) -> None:
        from qdrant_client import models

        if doc_ids:
            self._call("delete manifest", self._client.delete, self.manifest_name(collection),
                       points_selector=models.PointIdsList(points=doc_ids), wait=True)

    def upsert(self, collection: str, points: list[dict[str, Any]], batch_size: int = 256) -> int:
        """Write points ({id, vector, payload}); returns how many were written."""
        from qdrant_client import models

        for start in range(0, len(points), batch_size):
            batch = [
                models.PointStruct(id=p["id"], vector=_as_list(p["vector"]), payload=p["payload"])
                for p in points[start : start + batch_size]
            ]
            self._call("upsert", self._client.upsert, collection, points=batch, wait=True)
        return len(points)

    def delete_other_versions(self, collection: str, doc_id: str, keep_version: str | None) -> int:
        """Remove a document's points of every version but ``keep_version`` (all of them if None)."""
        from qdrant_client import models

        must_not = (
            [models.FieldCondition(key="version", match=models.MatchValue(value=keep_version))] if keep_version else []
        )
        flt = models.Filter(
            must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))], must_not=must_not
        )
        count = self._call("count", self._client.count, collection, count_filter=flt, exact=True).count
        if count:
            self._call(
                "delete", self._client.delete, collection, points_selector=models.FilterSelector(filter=flt), wait=True
            )
        return int(count)

    def delete_other_versions_many(self, collection: str, replace: list[tuple[str, str | None]]) -> int:
        """``delete_other_versions`` for many documents at once: one filtered scroll over the documents' points
        (``doc_id`` in the batch) and one delete by point id, instead of a count and a delete per document (in local
        mode each filtered call scans the whole collection, so per document the cost grew with the collection)."""
        from qdrant_client import models

        keep = dict(replace)
        if not keep:
            return 0
        stale: list = []
        for start in range(0, len(keep), 1000):
            ids = list(keep)[start : start + 1000]
            flt = models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=ids))])
            offset = None
            while True:
                points, offset = self._call("scroll", self._client.scroll, collection, scroll_filter=flt, limit=1000,
                                            offset=offset, with_payload=["doc_id", "version"], with_vectors=False)
                for point in points:
                    payload = point.payload or {}
                    wanted = keep.get(payload.get("doc_id"))
                    if wanted is None or payload.get("version") != wanted:
                        stale.append(point.id)
                if offset is None:
                    break
        for start in range(0, len(stale), 1000):
            self._call("delete", self._client.delete, collection,
                       points_selector=models.PointIdsList(points=stale[start : start + 1000]), wait=True)
        return len(stale)

    def list_collections(self) -> list[str]:
        """Every collection's name (physical names; aliases are in :meth:`aliases`)."""
        return sorted(c.name for c in self._call("list collections", self._client.get_collections).collections)

    def collection_model(self, collection: str) -> tuple[str | None, str]:
        """The embedding model and backend recorded in the collection's points, if any."""
        points, _ = self._call("read", self._client.scroll, collection, limit=1,
                               with_payload=["model", "model_backend"])
        payload = (points[0].payload or {}) if points else {}
        return payload.get("model"), payload.get("model_backend") or "torch"

    def points(self, collection: str, with_vectors: bool = False, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every point of a collection, ``{"id", "payload", "vector"}``, read a page at a time (constant memory)."""
        offset = None
        while True:
            batch, offset = self._call("scroll", self._client.scroll, collection, limit=page, offset=offset,
                                       with_payload=True, with_vectors=with_vectors)
            for point in batch:
                yield {"id": str(point.id), "payload": point.payload or {},
                       "vector": point.vector if with_vectors else None}
            if offset is None:
                return

    def query(self, collection: str, vector: list[float], limit: int = 5) -> list[tuple[float, dict[str, Any]]]:
        """The ``limit`` nearest points: (score, payload) pairs, best first."""
        response = self._call("search", self._client.query_points, collection, query=vector, limit=limit,
                              with_payload=True)
        return [(float(point.score), point.payload or {}) for point in response.points]

    def count(self, collection: str) -> int:
        return int(self._call("count", self._client.count, collection, exact=True).count)

    def search(self, collection: str, vector: list[float], limit: int = 5) -> list[SearchHit]:
        self.require_collection(collection)
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
            for score, payload in self.query(collection, vector, limit)
        ]
