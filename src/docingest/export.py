"""``docingest export``: a collection's points as JSON Lines, streamed a page at a time (constant memory), for
backups, audits and moving to another store."""

from __future__ import annotations

import json
from typing import TextIO

from docingest.core.store import MANIFEST_SUFFIX
from docingest.exceptions import ConfigurationError
from docingest.targets import QdrantTarget, open_store

DENSE_NAME = "dense"  # the unnamed dense vector's name in an export


def export_collection(collection: str, out: TextIO, vectors: bool = False, qdrant: QdrantTarget | None = None) -> int:
    """Write one line per point of ``collection`` (an alias is followed), ``{"id", "payload"}`` and with
    ``vectors`` also ``"vector": {"dense": [...], <sparse name>: {"indices", "values"}}``; manifests are not
    exported. Returns how many points were written."""
    if collection.endswith(MANIFEST_SUFFIX):
        raise ConfigurationError(f"{collection!r} is a manifest: export the collection it belongs to")
    store = open_store(qdrant)
    store.require_collection(collection)
    written = 0
    for point in store.points(store.resolve(collection), with_vectors=vectors, page=256):
        line = {"id": point["id"], "payload": point["payload"]}
        if vectors:
            line["vector"] = {(k or DENSE_NAME): v for k, v in (point["vector"] or {}).items()}
        out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        written += 1
    return written
