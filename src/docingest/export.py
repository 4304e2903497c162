"""``docingest export``: a collection's points as JSON Lines, streamed a page at a time (constant memory), for
backups, audits and moving to another store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TextIO

from docingest import store_socket
from docingest.core.store import MANIFEST_SUFFIX, QdrantStore
from docingest.exceptions import ConfigurationError, StoreBusyError
from docingest.targets import QdrantTarget, held_socket, open_store

DENSE_NAME = "dense"  # the unnamed dense vector's name in an export


def export_collection(collection: str, out: TextIO, vectors: bool = False, qdrant: QdrantTarget | None = None) -> int:
    """Write one line per point of ``collection`` (an alias is followed), ``{"id", "payload"}`` and with
    ``vectors`` also ``"vector": {"dense": [...], <sparse name>: {"indices", "values"}}``; manifests are not
    exported. Returns how many points were written. A store another process holds is read through it."""
    if collection.endswith(MANIFEST_SUFFIX):
        raise ConfigurationError(f"{collection!r} is a manifest: export the collection it belongs to")
    try:
        lines = points_of(open_store(qdrant), collection, vectors)
    except StoreBusyError:
        if (holder := held_socket(qdrant)) is None:
            raise
        args = {"collection": collection, "vectors": vectors}
        lines = (line["point"] for line in store_socket.ask(holder, "export", args) if "point" in line)
    written = 0
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        written += 1
    return written


def points_of(store: QdrantStore, collection: str, vectors: bool) -> Iterator[dict[str, Any]]:
    """The export's lines of ``collection`` in ``store``, a page at a time."""
    store.require_collection(collection)
    for point in store.points(store.resolve(collection), with_vectors=vectors, page=256):
        line: dict[str, Any] = {"id": point["id"], "payload": point["payload"]}
        if vectors:
            line["vector"] = {(k or DENSE_NAME): v for k, v in (point["vector"] or {}).items()}
        yield line
