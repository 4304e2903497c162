"""What every Qdrant backend offers: physical collections, aliases, points, filters and nearest-neighbour queries.

``QdrantStore`` (manifests, versions, search) is written once against this protocol; ``ClientBackend`` talks to a
Qdrant server (or qdrant-client's local mode) and ``EdgeBackend`` runs Qdrant Edge in the process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, SecretStr

Engine = Literal["edge", "qdrant-client"]
Distance = Literal["cosine", "dot"]
Fusion = Literal["rrf", "dbsf"]
RRF_K = 60  # reciprocal rank fusion: 1 / (k + rank), Qdrant's default k
# (held, released) callbacks for an embedded store's folder this process took or gives up: docingest.store_socket
# answers other processes' reads while the store is held.
HOLD_HOOKS: list[tuple[Callable[[Path], None], Callable[[Path], None]]] = []


class QdrantLocation(BaseModel):
    """Where Qdrant lives: a server URL, or a folder for the embedded engine."""

    url: str | None = Field(default=None, description="Server URL, e.g. http://localhost:6333.")
    path: Path | None = Field(default=None, description="Folder of the embedded store (used when no URL is given).")
    api_key: SecretStr | None = Field(default=None, description="API key for a server.")
    timeout: float = Field(default=30.0, description="Request timeout in seconds.")
    prefer_grpc: bool = Field(default=False, description="Use gRPC for a server.")
    engine: Engine = Field(
        default="edge",
        description="Engine for a folder: 'edge' (Qdrant Edge, the real engine in the process; the default) or "
        "'qdrant-client' (qdrant-client's local mode: a stand-in for a server, used by tests and by "
        "`docingest convert-store`).",
    )
    index_from_points: int = Field(
        default=20_000, ge=0,
        description="Embedded store: build a collection's HNSW index at the end of a run once this many of its points "
        "are not indexed yet (below that, exact search is fast enough); 0 never builds one.",
    )
    index_threads: int = Field(default=0, ge=0, description="Embedded store: threads that build an index (0: auto).")
    min_free_mb: int = Field(
        default=64, ge=0,
        description="Embedded store: refuse writes while its disk has less free space than this (the engine maps "
        "its files into memory, and a write into a full disk would kill the process instead of failing).",
    )

    @property
    def embedded(self) -> bool:
        return not self.url

    def describe(self) -> str:
        if self.url:
            return self.url
        return f"local:{self.path}" if self.engine == "qdrant-client" else f"embedded:{self.path}"

    def cache_key(self) -> tuple:
        return (self.url, str(self.path.resolve()) if self.path else None, self.prefer_grpc, self.engine)


@dataclass(frozen=True)
class Where:
    """A payload filter: every ``must`` field equals its value (or one of its values, for a list), and no ``must_not``
    field equals its value."""

    must: dict[str, Any] = field(default_factory=dict)
    must_not: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    """One stored point. ``vector`` maps a vector name ("" for the unnamed dense vector) to its value; sparse
    vectors are ``{"indices": [...], "values": [...]}``."""

    id: str
    payload: dict[str, Any]
    vector: dict[str, Any] | None = None


@dataclass
class StoredPoint:
    """A point to write: ``vector`` is the dense vector, ``sparse`` optional named sparse vectors."""

    id: str
    vector: list[float]
    payload: dict[str, Any]
    sparse: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)


@dataclass
class Search:
    """One query: ``dense`` (the unnamed vector), ``sparse`` (indices, values of the vector named ``sparse_name``),
    or both, fused with ``fusion`` over ``candidates`` hits of each."""

    limit: int
    dense: list[float] | None = None
    sparse: tuple[list[int], list[float]] | None = None
    sparse_name: str = "bm25"
    fusion: Fusion = "rrf"
    candidates: int = 0

    def prefetch_limit(self) -> int:
        return max(self.candidates, self.limit * 4, 40)


@dataclass
class Maintenance:
    """What ``Backend.maintain`` did to a collection at the end of a run."""

    points: int
    indexed: bool = False
    seconds: float = 0.0


def vectors_of(vector: Any) -> dict[str, Any] | None:
    """A stored point's vectors as ``{name: list | {"indices", "values"}}`` ("" is the unnamed dense vector)."""
    if vector is None:
        return None
    if not isinstance(vector, dict):
        return {"": list(vector)}
    out: dict[str, Any] = {}
    for name, value in vector.items():
        if hasattr(value, "indices"):
            out[name] = {"indices": list(value.indices), "values": list(value.values)}
        else:
            out[name] = list(value)
    return out


class Backend(Protocol):
    """Physical collections of one Qdrant; no alias resolution here (``QdrantStore`` does that)."""

    location: QdrantLocation

    def list_collections(self) -> list[str]: ...

    def collection_exists(self, name: str) -> bool: ...

    def create_collection(self, name: str, dimension: int, distance: Distance, indexes: Sequence[str],
                          sparse: Sequence[str] = ()) -> None: ...

    def sparse_vectors(self, name: str) -> set[str]: ...

    def add_sparse_vector(self, name: str, vector: str) -> None: ...

    def set_sparse(self, name: str, vector: str, items: Sequence[tuple[str, list[int], list[float]]],
                   payload: dict[str, Any]) -> None: ...

    def vector_size(self, name: str) -> int | None: ...

    def delete_collection(self, name: str) -> None: ...

    def aliases(self) -> dict[str, str]: ...

    def switch_alias(self, alias: str, target: str) -> None: ...

    def upsert(self, name: str, points: Sequence[StoredPoint]) -> None: ...

    def scroll(self, name: str, where: Where | None = None, limit: int = 1000, offset: Any = None,
               payload: bool | Sequence[str] = True, vectors: bool = False) -> tuple[list[Record], Any]: ...

    def count(self, name: str, where: Where | None = None) -> int: ...

    def delete_ids(self, name: str, ids: Sequence[str]) -> None: ...

    def delete_where(self, name: str, where: Where) -> None: ...

    def query(self, name: str, search: Search) -> list[tuple[float, dict[str, Any]]]: ...

    def maintain(self, name: str) -> Maintenance: ...

    def close(self) -> None: ...
