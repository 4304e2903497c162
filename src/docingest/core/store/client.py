"""The server backend: qdrant-client against a Qdrant server (REST or gRPC), or qdrant-client's local mode (a stand-in
for a server that keeps every point in memory; used by tests and read by ``docingest convert-store``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from docingest.core.store.backend import (
    RRF_K,
    Distance,
    Maintenance,
    QdrantLocation,
    Record,
    Search,
    StoredPoint,
    Where,
    vectors_of,
)
from docingest.exceptions import ConfigurationError, StoreError

if TYPE_CHECKING:
    from qdrant_client import QdrantClient, models

T = TypeVar("T")


def open_client(location: QdrantLocation) -> QdrantClient:
    """A new qdrant-client for ``location`` (a server URL, or a local-mode folder)."""
    from qdrant_client import QdrantClient

    api_key = location.api_key.get_secret_value() if location.api_key else None
    if location.url:
        return QdrantClient(url=location.url, api_key=api_key, timeout=int(location.timeout),
                            prefer_grpc=location.prefer_grpc)
    if location.path is None:
        raise ConfigurationError("no Qdrant location: set DOCINGEST_QDRANT_URL or DOCINGEST_QDRANT_PATH")
    location.path.mkdir(parents=True, exist_ok=True)
    try:
        return QdrantClient(path=str(location.path))
    except RuntimeError as exc:
        if "already accessed" in str(exc):
            raise ConfigurationError(f"Qdrant local storage {location.path} is in use by another process; "
                                     "wait for it, or use a Qdrant server (DOCINGEST_QDRANT_URL)") from exc
        raise


@overload
def _filter(where: None) -> None: ...
@overload
def _filter(where: Where) -> models.Filter: ...
def _filter(where: Where | None) -> models.Filter | None:
    from qdrant_client import models

    if where is None:
        return None

    def condition(key: str, value: Any) -> models.FieldCondition:
        match = models.MatchAny(any=list(value)) if isinstance(value, (list, tuple, set)) else \
            models.MatchValue(value=value)
        return models.FieldCondition(key=key, match=match)

    return models.Filter(must=[condition(k, v) for k, v in where.must.items()] or None,
                         must_not=[condition(k, v) for k, v in where.must_not.items()] or None)




class ClientBackend:
    """qdrant-client calls, serialised per client (local mode is not safe across threads)."""

    def __init__(self, location: QdrantLocation) -> None:
        self.location = location
        self.client = open_client(location)
        self._lock = threading.RLock()

    def _call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            with self._lock:
                return fn(*args, **kwargs)
        except (ConfigurationError, StoreError):
            raise
        except ValueError as exc:  # local mode raises ValueError for a missing collection
            raise ConfigurationError(f"Qdrant {action}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - network and server errors are transient
            raise StoreError(f"Qdrant at {self.location.describe()}: {action} failed: "
                             f"{type(exc).__name__}: {exc}") from exc

    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self._call("list collections", self.client.get_collections).collections)

    def collection_exists(self, name: str) -> bool:
        return bool(self._call("check collection", self.client.collection_exists, name))

    def create_collection(self, name: str, dimension: int, distance: Distance, indexes: Sequence[str],
                          sparse: Sequence[str] = ()) -> None:
        from qdrant_client import models

        metric = models.Distance.COSINE if distance == "cosine" else models.Distance.DOT
        self._call("create collection", self.client.create_collection, name,
                   vectors_config=models.VectorParams(size=dimension, distance=metric),
                   sparse_vectors_config={v: models.SparseVectorParams(modifier=models.Modifier.IDF)
                                          for v in sparse} or None)
        if self.location.url:  # payload indexes have no effect in local mode
            for field in indexes:
                self._call("create index", self.client.create_payload_index, name, field_name=field,
                           field_schema=models.PayloadSchemaType.KEYWORD)

    def vector_size(self, name: str) -> int | None:
        info = self._call("read collection", self.client.get_collection, name)
        return getattr(info.config.params.vectors, "size", None)

    def sparse_vectors(self, name: str) -> set[str]:
        info = self._call("read collection", self.client.get_collection, name)
        return set(info.config.params.sparse_vectors or {})

    def add_sparse_vector(self, name: str, vector: str) -> None:
        """Qdrant servers add a named vector to an existing collection; older servers and local mode refuse (the
        collection then stays dense-only until ``docingest migrate`` rebuilds it)."""
        from qdrant_client import models

        self._call("add sparse vector", self.client.update_collection, name,
                   sparse_vectors_config={vector: models.SparseVectorParams(modifier=models.Modifier.IDF)})
        if vector not in self.sparse_vectors(name):
            raise ConfigurationError(f"Qdrant at {self.location.describe()} cannot add the sparse vector {vector!r} "
                                     f"to the existing collection {name!r}")

    def set_sparse(self, name: str, vector: str, items: Sequence[tuple[str, list[int], list[float]]],
                   payload: dict[str, Any]) -> None:
        from qdrant_client import models

        points = [models.PointVectors(id=i, vector={vector: models.SparseVector(indices=idx, values=val)})
                  for i, idx, val in items]
        self._call("update vectors", self.client.update_vectors, name, points=points, wait=True)
        self._call("set payload", self.client.set_payload, name, payload=payload,
                   points=[i for i, _, _ in items], wait=True)

    def distance(self, name: str) -> Distance:
        info = self._call("read collection", self.client.get_collection, name)
        metric = getattr(info.config.params.vectors, "distance", None)
        return "dot" if str(getattr(metric, "value", metric)).lower() == "dot" else "cosine"

    def delete_collection(self, name: str) -> None:
        self._call("delete collection", self.client.delete_collection, name)

    def aliases(self) -> dict[str, str]:
        response = self._call("read aliases", self.client.get_aliases)
        return {a.alias_name: a.collection_name for a in response.aliases}

    def switch_alias(self, alias: str, target: str) -> None:
        from qdrant_client import models

        ops: list = []
        if alias in self.aliases():
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target,
                                                                               alias_name=alias)))
        self._call("switch alias", self.client.update_collection_aliases, change_aliases_operations=ops)

    def upsert(self, name: str, points: Sequence[StoredPoint]) -> None:
        from qdrant_client import models

        def vector(p: StoredPoint) -> models.VectorStruct:
            if not p.sparse:
                return p.vector
            return {"": p.vector, **{k: models.SparseVector(indices=list(i), values=list(v))
                                     for k, (i, v) in p.sparse.items()}}

        batch = [models.PointStruct(id=p.id, vector=vector(p), payload=p.payload) for p in points]
        self._call("upsert", self.client.upsert, name, points=batch, wait=True)

    def scroll(self, name: str, where: Where | None = None, limit: int = 1000, offset: Any = None,
               payload: bool | Sequence[str] = True, vectors: bool = False) -> tuple[list[Record], Any]:
        points, offset = self._call("scroll", self.client.scroll, name, scroll_filter=_filter(where), limit=limit,
                                    offset=offset, with_payload=payload if isinstance(payload, bool) else list(payload),
                                    with_vectors=vectors)
        return [Record(str(p.id), p.payload or {}, vectors_of(p.vector) if vectors else None) for p in points], offset

    def count(self, name: str, where: Where | None = None) -> int:
        return int(self._call("count", self.client.count, name, count_filter=_filter(where), exact=True).count)

    def delete_ids(self, name: str, ids: Sequence[str]) -> None:
        from qdrant_client import models

        if ids:
            self._call("delete", self.client.delete, name, points_selector=models.PointIdsList(points=list(ids)),
                       wait=True)

    def delete_where(self, name: str, where: Where) -> None:
        from qdrant_client import models

        self._call("delete", self.client.delete, name, points_selector=models.FilterSelector(filter=_filter(where)),
                   wait=True)

    def query(self, name: str, search: Search) -> list[tuple[float, dict[str, Any]]]:
        from qdrant_client import models

        queries: list[tuple[Any, str | None]] = []
        if search.dense is not None:
            queries.append((list(search.dense), None))
        if search.sparse is not None:
            indices, values = search.sparse
            queries.append((models.SparseVector(indices=indices, values=values), search.sparse_name))
        if len(queries) == 1:
            (query, using), prefetch = queries[0], None
        else:
            query, using = (models.RrfQuery(rrf=models.Rrf(k=RRF_K)) if search.fusion == "rrf"
                            else models.FusionQuery(fusion=models.Fusion.DBSF)), None
            prefetch = [models.Prefetch(query=q, using=u, limit=search.prefetch_limit()) for q, u in queries]
        response = self._call("search", self.client.query_points, name, query=query, using=using, prefetch=prefetch,
                              limit=search.limit, with_payload=True)
        return [(float(p.score), p.payload or {}) for p in response.points]

    def maintain(self, name: str) -> Maintenance:
        """A server indexes on its own; local mode has no index."""
        return Maintenance(points=self.count(name))

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
