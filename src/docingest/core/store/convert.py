"""Convert a folder written by qdrant-client's local mode (docingest's embedded store before Qdrant Edge) into the
Edge layout in the same folder: every collection with its points' vectors and payloads (manifests included), and
the aliases; counts verified; the old files stay where they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from docingest.core.store.backend import QdrantLocation, StoredPoint
from docingest.core.store.edge import MARKER, EdgeBackend, is_local_mode_folder
from docingest.core.store.store import PAYLOAD_INDEXES
from docingest.exceptions import ConfigurationError, StoreError


@dataclass
class Conversion:
    root: Path
    collections: dict[str, int] = field(default_factory=dict)  # name -> points copied (and verified)
    aliases: dict[str, str] = field(default_factory=dict)
    already: bool = False  # the folder was converted before: nothing done


def convert_local_mode(root: Path, page: int = 512) -> Conversion:
    from docingest.core.store.client import ClientBackend

    root = Path(root)
    if not is_local_mode_folder(root):
        raise ConfigurationError(f"{root} holds no qdrant-client local-mode store (no meta.json and collection/)")
    report = Conversion(root=root)
    if (root / MARKER).is_file():
        report.already = True
        return report
    old = ClientBackend(QdrantLocation(path=root, engine="qdrant-client"))
    new = EdgeBackend(QdrantLocation(path=root), converting=True)
    try:
        for name in new.list_collections():  # what an interrupted conversion left: made by us, done again
            new.delete_collection(name)
        for name in old.list_collections():
            size = old.vector_size(name)
            if size is None:
                raise ConfigurationError(f"collection {name!r} has named vectors; docingest never made it")
            new.create_collection(name, size, old.distance(name), PAYLOAD_INDEXES)
            offset = None
            while True:
                records, offset = old.scroll(name, limit=page, offset=offset, payload=True, vectors=True)
                new.upsert(name, [StoredPoint(r.id, (r.vector or {}).get("", []), r.payload) for r in records])
                if offset is None:
                    break
            copied, expected = new.count(name), old.count(name)
            if copied != expected:
                raise StoreError(f"collection {name!r}: {copied} points copied but {expected} in the old store")
            report.collections[name] = copied
        for alias, target in old.aliases().items():
            new.switch_alias(alias, target)
            report.aliases[alias] = target
        for name in report.collections:
            new.maintain(name)
        new.mark()  # last: until here the folder still opens as the old store (and the conversion can run again)
    finally:
        old.close()
        new.close()
    return report
