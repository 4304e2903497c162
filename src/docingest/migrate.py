"""Embedding model migration: build a new versioned collection with the new model, then switch the alias.

``<name>`` is an alias of ``<name>__v<N>``. A migration ingests the collection's sources into ``<name>__v<N+1>``
with the new model (the normal flow: same ids, sync and failure semantics), and only when that is complete points
the alias at it, in one atomic alias operation: search and incremental syncs keep using the old collection until
then, and the new one from then on. The old collection is deleted afterwards unless kept.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, cast

from pydantic import BaseModel, Field

from docingest.core.sparse import SPARSE_VECTOR
from docingest.core.store import QdrantStore
from docingest.datamodel import IngestResult
from docingest.exceptions import ConfigurationError
from docingest.options import IngestOptions

if TYPE_CHECKING:
    from docingest.targets import QdrantTarget


class MigrationResult(BaseModel):
    """What a migration did."""

    collection: str = Field(description="The alias that search and the flow address.")
    old: str = Field(description="The collection the alias pointed at before.")
    new: str = Field(description="The collection built with the new model.")
    model: str
    switched: bool = Field(description="Whether the alias now points at the new collection.")
    old_deleted: bool = False
    sources: list[str] = Field(default_factory=list)
    documents: int = Field(default=0, description="Documents ingested into the new collection.")
    chunks: int = 0
    failed: int = 0
    failures: list[dict] = Field(default_factory=list)
    duration_s: float = 0.0
    reason: str | None = Field(default=None, description="Why the alias was not switched, if it was not.")


def next_version(store: QdrantStore, collection: str) -> str:
    """``<collection>__v<N+1>`` for the highest N among existing collections."""
    names = store.list_collections()
    pattern = re.compile(rf"^{re.escape(collection)}__v(\d+)$")
    versions = [int(m.group(1)) for n in names if (m := pattern.match(n))]
    return f"{collection}__v{max(versions, default=1) + 1}"


def migrate_collection(
    collection: str,
    model: str,
    sources: list[str] | None = None,
    source_block: str | None = None,
    options: IngestOptions | None = None,
    qdrant: QdrantTarget | None = None,
    keep_old: bool = False,
    allow_failures: bool = False,
) -> MigrationResult:
    """Re-build ``collection`` with ``model`` from its sources (default: those recorded in its manifest), then
    switch its alias. Documents that fail keep the switch from happening unless ``allow_failures``. A plain
    collection (not behind an alias, made before aliases were used) is replaced: ``keep_old`` cannot apply."""
    from docingest.core.embed import load_model
    from docingest.flows.ingest import ingest_documents
    from docingest.flows.runspec import with_preset
    from docingest.settings import get_settings
    from docingest.targets import open_store

    started = time.monotonic()
    store = open_store(qdrant)
    store.require_collection(collection)
    old = store.resolve(collection)
    legacy = old == collection  # a plain collection (made before aliases): it must go before the alias can exist
    if not sources and not source_block:
        sources = store.source_uris(collection)
        if not sources:
            raise ConfigurationError(f"collection {collection!r} records no sources: give SOURCE or --source-block")
    options = with_preset(options)
    options = options.model_copy(update={"embed": options.embed.model_copy(update={"model": model})})
    loaded = load_model(model, get_settings().embed.device, options.embed.backend)
    new = next_version(store, collection)
    sparse = () if options.store.bm25_language.strip().lower() == "none" else (SPARSE_VECTOR,)
    store.ensure_collection(new, loaded.info.dimension, alias=False, sparse=sparse)
    result = MigrationResult(collection=collection, old=old, new=new, model=model, switched=False,
                             sources=list(sources or [f"block:{source_block}"]))
    runs = [dict(source=s) for s in sources] if sources else [dict(source_block=source_block)]
    for run in runs:
        done = cast(IngestResult, ingest_documents(collection=new, options=options, qdrant=qdrant, **run))
        result.documents += done.documents.new + done.documents.changed + done.documents.unchanged
        result.chunks += done.chunks.upserted
        result.failed += done.documents.failed
        result.failures += [f.model_dump() for f in done.failures]
    if result.failed and not allow_failures:
        result.reason = (f"{result.failed} documents failed: the alias still points at {old}; fix them and run "
                         f"again, or pass --allow-failures ({new} is kept for inspection)")
    elif not store.count(new) and store.count(old):
        result.reason = f"{new} is empty while {old} is not: the alias was not switched"
    elif legacy:
        # Qdrant cannot rename a collection: delete the plain one, then create the alias (a gap of milliseconds
        # in which the name does not exist; every later migration switches atomically).
        store.drop_collection(old)
        store.switch_alias(collection, new)
        result.switched = result.old_deleted = True
    else:
        store.switch_alias(collection, new)
        result.switched = True
        if not keep_old:
            store.drop_collection(old)
            result.old_deleted = True
    result.duration_s = time.monotonic() - started
    return result
