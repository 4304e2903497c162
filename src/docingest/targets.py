"""Where a run writes: the collection and the Qdrant it lives in (flow override > block > settings), and the
parse cache's result storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from docingest import store_socket
from docingest.core.store import QdrantLocation, QdrantStore
from docingest.exceptions import ConfigurationError
from docingest.settings import get_settings


class QdrantTarget(BaseModel):
    """Where Qdrant lives, overriding the settings for one call: a server URL or an embedded store's folder, at most
    one (no secrets here: API keys come from settings or a block). Every public function and command takes one of
    these; ``open_store`` opens it."""

    model_config = ConfigDict(frozen=True)

    url: str | None = Field(default=None, description="Qdrant server URL.")
    path: str | None = Field(default=None, description="Folder of the embedded store.")

    @classmethod
    def given(cls, path: str | Path | None = None, url: str | None = None) -> QdrantTarget | None:
        """The target of a command's or a call's loose arguments; None when neither is given (the settings decide).
        Both: pydantic's ValidationError, which each caller words in its own arguments' names."""
        if not (path or url):
            return None
        return cls(url=url, path=str(path) if path else None)

    @model_validator(mode="after")
    def _one_location(self) -> QdrantTarget:
        if self.url and self.path:
            raise ValueError(f"a Qdrant target is a server URL or an embedded store folder, not both (url {self.url!r}, "
                             f"path {self.path!r})")
        return self


def open_store(qdrant: QdrantTarget | None = None, qdrant_block: str | None = None) -> QdrantStore:
    """The store at ``qdrant`` (else the block's, else the settings')."""
    return QdrantStore(resolve_location(qdrant, qdrant_block))


def resolve_location(qdrant: QdrantTarget | None = None, qdrant_block: str | None = None) -> QdrantLocation:
    """Flow override > block > settings (DOCINGEST_QDRANT_URL / DOCINGEST_QDRANT_PATH) > .docingest/qdrant."""
    settings = get_settings()
    if qdrant_block:
        from docingest.blocks.loading import load_block
        from docingest.blocks.qdrant import QdrantConnection

        location = load_block(qdrant_block, QdrantConnection).location()
    else:
        location = QdrantLocation(**settings.qdrant.model_dump(exclude={"path"}), path=settings.resolved_qdrant_path())
    return _override(location, qdrant)


def held_socket(qdrant: QdrantTarget | None = None) -> Path | None:
    """The read socket of the process holding the embedded store ``qdrant`` names (else the settings' store), if
    another process holds it and shares reads; None for a server."""
    location = resolve_location(qdrant)
    if not location.embedded or location.path is None:
        return None
    return store_socket.socket_of(location.path)


def _override(location: QdrantLocation, qdrant: QdrantTarget | None) -> QdrantLocation:
    if qdrant and qdrant.url:
        return location.model_copy(update={"url": qdrant.url, "path": None})
    if qdrant and qdrant.path:
        return location.model_copy(update={"url": None, "path": Path(qdrant.path)})
    return location


def resolve_target(collection: str | None, qdrant: QdrantTarget | None = None, qdrant_block: str | None = None,
                   collection_block: str | None = None) -> tuple[str, QdrantLocation]:
    """The collection name and where it lives: a QdrantCollection block gives both (``collection`` still renames,
    ``qdrant`` still relocates); otherwise ``collection`` with ``resolve_location``."""
    if collection_block:
        from docingest.blocks.loading import load_block
        from docingest.blocks.qdrant import QdrantCollection

        block = load_block(collection_block, QdrantCollection)
        return collection or block.collection_name, _override(block.connection.location(), qdrant)
    if not collection:
        raise ConfigurationError("give a collection or a collection block")
    return collection, resolve_location(qdrant, qdrant_block)


def resolve_result_storage(name: str | None) -> Any:
    """The saved result-storage block (``DOCINGEST_RESULT_STORAGE`` or the flow's ``result_storage``): any Prefect
    WritableFileSystem block, e.g. ``docingest-s3-result-storage/parse-cache``; None keeps Prefect's default
    (local files, PREFECT_RESULTS_LOCAL_STORAGE_PATH)."""
    name = name or get_settings().prefect.result_storage
    if not name:
        from docingest.folders import check_writable, parse_cache_folder

        check_writable(parse_cache_folder())
        return None
    from docingest.blocks.loading import load_block  # a named block: Prefect is imported from here on

    if "/" in name:
        from prefect.filesystems import WritableFileSystem

        block = load_block(name, WritableFileSystem)  # type: ignore[type-abstract]  # any concrete subclass
    else:
        from docingest.blocks.results import S3ResultStorage

        block = load_block(name, S3ResultStorage)
    if hasattr(block, "check"):
        block.check()
    return block

