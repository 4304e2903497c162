"""The embedded backend: Qdrant Edge (Qdrant's own storage engine in the process: segments, WAL, HNSW, payload
indexes), one shard per collection under one folder.

Layout of ``<root>`` (default ``.docingest/qdrant``)::

    docingest-store.json    what wrote the folder (engine, layout version)
    docingest.lock          held by the one process that has the store open; holder.json says which
    aliases.json            alias -> collection, replaced atomically (temporary file, fsync, rename)
    collections/<name>/     one Edge shard per collection (a collection's manifest is the collection
                            ``<name>__manifest``)

Every write goes through the shard's write-ahead log before it returns, so a process killed at any point loses
nothing it was told was written; ``maintain`` flushes segments and builds the HNSW index once a collection holds
enough points that are not indexed yet.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from docingest.core.store.backend import (
    HOLD_HOOKS,
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
from docingest.exceptions import ConfigurationError, StoreBusyError, StoreError, UnknownCollectionError

if TYPE_CHECKING:
    from qdrant_edge import EdgeShard, FieldCondition, Filter, Vector

T = TypeVar("T")

logger = logging.getLogger("docingest.store")

MARKER = "docingest-store.json"
LAYOUT = {"engine": "qdrant-edge", "layout": 1}
COLLECTIONS = "collections"
ALIASES = "aliases.json"
LOCK = "docingest.lock"
HOLDER = "holder.json"
SHARD_CONFIG = "edge_config.json"
DENSE = ""  # the unnamed dense vector, as on a server collection made by docingest


def is_local_mode_folder(root: Path) -> bool:
    """Whether ``root`` was written by qdrant-client's local mode (the embedded store of docingest before Edge)."""
    return (root / "meta.json").is_file() and (root / "collection").is_dir()


def write_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON: readers (and a crash) see the old file or the new one, never part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RootLock:
    """One process at a time per store folder: an exclusive lock on ``docingest.lock`` (released by the kernel when
    the process ends, also on kill -9), with ``holder.json`` naming the process that holds it."""

    def __init__(self, root: Path) -> None:
        from filelock import FileLock, Timeout

        self.root = root
        self._lock = FileLock(root / LOCK, timeout=0, thread_local=False)
        try:
            self._lock.acquire()
        except Timeout:
            raise StoreBusyError(f"embedded Qdrant store {root} is in use by {self.holder()}: one process at a "
                                     "time opens it; wait for it to finish, or run a Qdrant server "
                                     "(DOCINGEST_QDRANT_URL)") from None
        write_atomic(root / HOLDER, {"pid": os.getpid(), "command": " ".join(sys.argv)[:300],
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def holder(self) -> str:
        try:
            info = json.loads((self.root / HOLDER).read_text(encoding="utf-8"))
            return f"process {info['pid']} ({info.get('command') or '?'})"
        except (OSError, ValueError, KeyError):
            return "another process"

    def release(self) -> None:
        self._lock.release(force=True)


class EdgeBackend:
    """Collections as Qdrant Edge shards under one folder, held by this process."""

    def __init__(self, location: QdrantLocation, converting: bool = False) -> None:
        if location.path is None:
            raise ConfigurationError("no Qdrant location: set DOCINGEST_QDRANT_URL or DOCINGEST_QDRANT_PATH")
        self.location = location
        self.root = Path(location.path)
        self.index_from = location.index_from_points
        self.index_threads = location.index_threads
        self._mutex = threading.RLock()
        self._shards: dict[str, Any] = {}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only mount, a full disk, a wrong owner: one line, not a traceback
            raise ConfigurationError(f"cannot create the embedded store folder {self.root}: "
                                     f"{exc.strerror or type(exc).__name__} (chosen by the run's Qdrant path, "
                                     f"DOCINGEST_QDRANT_PATH or DOCINGEST_HOME)") from None
        marked = (self.root / MARKER).is_file()
        if not marked and is_local_mode_folder(self.root) and not converting:
            raise ConfigurationError(
                f"{self.root} was written by qdrant-client's local mode (docingest before Qdrant Edge): convert it "
                f"once with `docingest convert-store --qdrant-path {self.root}`")
        self._root_lock = RootLock(self.root)
        (self.root / COLLECTIONS).mkdir(exist_ok=True)
        if not marked and not converting:
            self.mark()
        self._aliases = self._read_aliases()
        self._held = not converting
        if self._held:
            for held, _ in HOLD_HOOKS:
                held(self.root)

    def mark(self) -> None:
        """Record that this folder holds an Edge store (written last by a conversion)."""
        from importlib.metadata import version

        write_atomic(self.root / MARKER, {**LAYOUT, "qdrant_edge": version("qdrant-edge-py")})

    # -- shards ---------------------------------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise ConfigurationError(f"invalid collection name: {name!r}")
        return self.root / COLLECTIONS / name

    def _writable(self) -> None:
        """Refuse a write while the disk is (nearly) full: the engine writes through memory-mapped files, and a page
        that cannot be backed by disk space kills the process with SIGBUS instead of raising."""
        free = shutil.disk_usage(self.root).free
        if free < self.location.min_free_mb * 2**20:
            raise StoreError(f"Qdrant Edge at {self.root}: only {free / 2**20:.0f} MB free on its disk (writes need "
                             f"{self.location.min_free_mb} MB): free some space and run again")

    def _call(self, action: str, fn: Callable[..., T], *args: Any, write: bool = False) -> T:
        try:
            with self._mutex:
                if write:
                    self._writable()
                return fn(*args)
        except (ConfigurationError, StoreError):
            raise
        except Exception as exc:  # noqa: BLE001 - the engine raises plain Exception (I/O, a full disk...)
            raise StoreError(f"Qdrant Edge at {self.root}: {action} failed: {exc}") from exc

    def _shard(self, name: str) -> EdgeShard:
        """The open shard of a collection (opened on first use)."""
        from qdrant_edge import EdgeShard

        with self._mutex:
            name = self._aliases.get(name, name)  # point operations accept an alias, as a server's do
            shard = self._shards.get(name)
            if shard is not None:
                return shard
            folder = self._dir(name)
            if not (folder / SHARD_CONFIG).is_file():
                if folder.is_dir():
                    raise ConfigurationError(f"collection folder {folder} is damaged (no {SHARD_CONFIG}); nothing "
                                             "was changed: restore it, or remove the folder to rebuild the collection")
                raise UnknownCollectionError(f"unknown collection: {name!r}")
            self._writable()  # opening replays the log and maps a fresh log segment: it writes too
            try:
                shard = EdgeShard.load(str(folder))
            except Exception as exc:  # noqa: BLE001
                if "WouldBlock" in str(exc):
                    raise StoreBusyError(f"collection folder {folder} is in use by another process") from exc
                raise ConfigurationError(f"collection folder {folder} cannot be opened ({exc}); nothing was "
                                         "changed: restore it, or remove the folder to rebuild the collection") from exc
            self._shards[name] = shard
            return shard

    def list_collections(self) -> list[str]:
        folder = self.root / COLLECTIONS
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / SHARD_CONFIG).is_file())

    def collection_exists(self, name: str) -> bool:
        return (self._dir(name) / SHARD_CONFIG).is_file()

    def create_collection(self, name: str, dimension: int, distance: Distance, indexes: Sequence[str],
                          sparse: Sequence[str] = ()) -> None:
        """Create the shard in a temporary folder and rename it into place: a crash leaves no half collection."""
        from qdrant_edge import (
            Distance as EdgeDistance,
        )
        from qdrant_edge import (
            EdgeConfig,
            EdgeOptimizersConfig,
            EdgeShard,
            EdgeSparseVectorParams,
            EdgeVectorParams,
            HnswIndexConfig,
            Modifier,
            PayloadSchemaType,
            UpdateOperation,
        )

        folder = self._dir(name)
        if folder.exists():
            raise ConfigurationError(f"collection folder {folder} exists already; nothing was changed")
        metric = EdgeDistance.Cosine if distance == "cosine" else EdgeDistance.Dot
        config = EdgeConfig(
            vectors={DENSE: EdgeVectorParams(size=dimension, distance=metric)},
            sparse_vectors={v: EdgeSparseVectorParams(modifier=Modifier.Idf) for v in sparse} or None,
            hnsw_config=HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000,
                                        max_indexing_threads=self.index_threads),
            # Optimizers run only in ``maintain``; a segment is worth an index from ``index_from`` points.
            optimizers=EdgeOptimizersConfig(indexing_threshold=max(1, round(max(1, self.index_from) * dimension * 4 / 1024))),
        )
        tmp = folder.with_name(f".new-{name}-{uuid.uuid4().hex[:8]}")

        def create() -> None:
            shard = EdgeShard.create(str(tmp), config)
            try:
                for field in indexes:
                    shard.update(UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword))
                shard.flush()
            finally:
                shard.close()
            os.replace(tmp, folder)

        try:
            self._call("create collection", create, write=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def vector_size(self, name: str) -> int | None:
        config = self._config(name)
        return config.get("vectors", {}).get(DENSE, {}).get("size")

    def sparse_vectors(self, name: str) -> set[str]:
        return set(self._config(name).get("sparse_vectors") or {})

    def add_sparse_vector(self, name: str, vector: str) -> None:
        from qdrant_edge import Modifier, UpdateOperation

        operation = UpdateOperation.create_sparse_vector(vector, modifier=Modifier.Idf)
        self._call("add sparse vector", self._shard(name).update, operation, write=True)
        self._call("flush", self._shard(name).flush)

    def set_sparse(self, name: str, vector: str, items: Sequence[tuple[str, list[int], list[float]]],
                   payload: dict[str, Any]) -> None:
        from qdrant_edge import PointVectors, SparseVector, UpdateOperation

        shard = self._shard(name)
        vectors = [PointVectors(id=i, vector={vector: SparseVector(indices=idx, values=val)}) for i, idx, val in items]
        self._call("update vectors", shard.update, UpdateOperation.update_vectors(vectors), write=True)
        self._call("set payload", shard.update, UpdateOperation.set_payload([i for i, _, _ in items], payload),
                   write=True)

    def distance(self, name: str) -> Distance:
        metric = str(self._config(name).get("vectors", {}).get(DENSE, {}).get("distance", "Cosine"))
        return "dot" if metric.lower() == "dot" else "cosine"

    def _config(self, name: str) -> dict[str, Any]:
        name = self.aliases().get(name, name)
        try:
            return json.loads((self._dir(name) / SHARD_CONFIG).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UnknownCollectionError(f"unknown collection: {name!r}") from None
        except ValueError as exc:
            raise ConfigurationError(f"collection folder {self._dir(name)} is damaged ({SHARD_CONFIG}: {exc}); "
                                     "nothing was changed") from exc

    def delete_collection(self, name: str) -> None:
        folder = self._dir(name)
        with self._mutex:
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            if folder.exists():
                trash = folder.with_name(f".deleted-{name}-{uuid.uuid4().hex[:8]}")
                os.replace(folder, trash)  # gone at once for readers; the files go after
                shutil.rmtree(trash, ignore_errors=True)

    # -- aliases --------------------------------------------------------------------------------------------------

    def _read_aliases(self) -> dict[str, str]:
        path = self.root / ALIASES
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ConfigurationError(f"{path} is damaged ({exc}); nothing was changed") from exc
        return {str(k): str(v) for k, v in data.get("aliases", {}).items()}

    def aliases(self) -> dict[str, str]:
        with self._mutex:
            return dict(self._aliases)

    def switch_alias(self, alias: str, target: str) -> None:
        with self._mutex:
            aliases = {**self._aliases, alias: target}
            self._call("switch alias", write_atomic, self.root / ALIASES, {"aliases": aliases}, write=True)
            self._aliases = aliases

    # -- points ---------------------------------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[StoredPoint]) -> None:
        from qdrant_edge import Point, SparseVector, UpdateOperation

        def vector(p: StoredPoint) -> Vector:
            if not p.sparse:
                return {DENSE: p.vector}
            return {DENSE: p.vector, **{k: SparseVector(indices=list(i), values=list(v))
                                        for k, (i, v) in p.sparse.items()}}

        batch = [Point(id=p.id, vector=vector(p), payload=p.payload) for p in points]
        shard = self._shard(name)
        self._call("upsert", shard.update, UpdateOperation.upsert_points(batch), write=True)

    def scroll(self, name: str, where: Where | None = None, limit: int = 1000, offset: Any = None,
               payload: bool | Sequence[str] = True, vectors: bool = False) -> tuple[list[Record], Any]:
        from qdrant_edge import ScrollRequest

        request = ScrollRequest(offset=offset, limit=limit, filter=_filter(where),
                                with_payload=payload if isinstance(payload, bool) else list(payload),
                                with_vector=vectors)
        records, offset = self._call("scroll", self._shard(name).scroll, request)
        return [Record(str(r.id), r.payload or {}, vectors_of(r.vector) if vectors else None) for r in records], offset

    def count(self, name: str, where: Where | None = None) -> int:
        from qdrant_edge import CountRequest

        return int(self._call("count", self._shard(name).count, CountRequest(exact=True, filter=_filter(where))))

    def delete_ids(self, name: str, ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        if ids:
            self._call("delete", self._shard(name).update, UpdateOperation.delete_points(list(ids)), write=True)

    def delete_where(self, name: str, where: Where) -> None:
        from qdrant_edge import UpdateOperation

        operation = UpdateOperation.delete_points_by_filter(_filter(where))
        self._call("delete", self._shard(name).update, operation, write=True)

    def query(self, name: str, search: Search) -> list[tuple[float, dict[str, Any]]]:
        from qdrant_edge import Fusion, Prefetch, Query, QueryRequest, SparseVector

        queries = []
        if search.dense is not None:
            queries.append(Query.Nearest(list(search.dense), using=DENSE))
        if search.sparse is not None:
            indices, values = search.sparse
            queries.append(Query.Nearest(SparseVector(indices=indices, values=values), using=search.sparse_name))
        if len(queries) == 1:
            request = QueryRequest(limit=search.limit, query=queries[0], with_payload=True)
        else:
            fusion = Fusion.Rrf(k=RRF_K) if search.fusion == "rrf" else Fusion.Dbsf()
            request = QueryRequest(limit=search.limit, query=cast(Any, fusion), with_payload=True,  # its stub omits Fusion
                                   prefetches=[Prefetch(limit=search.prefetch_limit(), query=q) for q in queries])
        return [(float(p.score), p.payload or {}) for p in self._call("search", self._shard(name).query, request)]

    # -- upkeep ---------------------------------------------------------------------------------------------------

    def maintain(self, name: str) -> Maintenance:
        """Flush the collection's segments, and build the HNSW index when at least ``index_from`` of its points are
        not indexed yet (never inside a batch: once, at the end of a run)."""
        from qdrant_edge import CountRequest, Filter, HasVectorCondition

        shard = self._shard(name)
        info = self._call("read collection", shard.info)
        self._call("flush", shard.flush)
        points = int(info.points_count)
        # The engine's indexed count includes sparse vectors (always indexed): only dense ones are left to index.
        indexed = int(info.indexed_vectors_count)
        for vector in self.sparse_vectors(name):
            request = CountRequest(exact=True, filter=Filter(must=[HasVectorCondition(vector)]))
            indexed -= int(self._call("count", shard.count, request))
        unindexed = points - max(0, indexed)
        if not self.index_from or unindexed < self.index_from:
            return Maintenance(points=points)
        logger.info("building the HNSW index of %s (%d points, %d not indexed yet)", name, points, unindexed)
        started = time.perf_counter()
        self._call("build index", shard.optimize, write=True)
        self._call("flush", shard.flush)
        return Maintenance(points=points, indexed=True, seconds=time.perf_counter() - started)

    def close(self) -> None:
        if getattr(self, "_held", False):
            self._held = False
            for _, released in HOLD_HOOKS:
                released(self.root)
        with self._mutex:
            for shard in self._shards.values():
                try:
                    shard.flush()
                    shard.close()
                except Exception:  # noqa: BLE001 - closing at exit: nothing left to tell
                    pass
            self._shards.clear()
            self._root_lock.release()


@overload
def _filter(where: None) -> None: ...
@overload
def _filter(where: Where) -> Filter: ...
def _filter(where: Where | None) -> Filter | None:
    from qdrant_edge import FieldCondition, Filter, MatchAny, MatchValue

    if where is None:
        return None

    def condition(key: str, value: Any) -> FieldCondition:
        match = MatchAny(any=list(value)) if isinstance(value, (list, tuple, set)) else MatchValue(value=value)
        return FieldCondition(key=key, match=match)

    return Filter(must=[condition(k, v) for k, v in where.must.items()] or None,
                  must_not=[condition(k, v) for k, v in where.must_not.items()] or None)
