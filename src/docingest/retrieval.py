"""Semantic search over a collection, with the model the collection was built with."""

from __future__ import annotations

from docingest.core.embed import embed_texts, load_model
from docingest.core.store import QdrantStore
from docingest.datamodel import SearchResults
from docingest.exceptions import ConfigurationError, StoreError
from docingest.settings import get_settings


def collection_model(store: QdrantStore, collection: str) -> tuple[str | None, str]:
    """The embedding model and backend recorded in the collection's points, if any."""
    return store.collection_model(collection)


def search(
    query: str,
    collection: str,
    limit: int = 5,
    qdrant_url: str | None = None,
    qdrant_path: str | None = None,
    model: str | None = None,
) -> SearchResults:
    """Return the ``limit`` chunks closest to ``query``. Raises ConfigurationError for an unknown collection."""
    from docingest.targets import QdrantTarget, resolve_location

    store = QdrantStore(resolve_location(QdrantTarget(url=qdrant_url, path=qdrant_path)))
    store.require_collection(collection)
    for attempt in range(2):
        # The alias is resolved once, so the model read and the query address the same collection even while a
        # migration switches the alias; a collection deleted right after the switch is retried on the new one.
        physical = store.resolve(collection)
        try:
            return _search(store, physical, query, limit, model)
        except (ConfigurationError, StoreError):
            if attempt or store.resolve(collection) == physical:
                raise
    raise AssertionError("unreachable")


def _search(store: QdrantStore, physical: str, query: str, limit: int, model: str | None) -> SearchResults:
    settings = get_settings()
    recorded, backend = collection_model(store, physical)
    name = model or recorded or settings.embed_model
    loaded = load_model(name, settings.embed_device, backend)
    vector = embed_texts(loaded, [query])[0]
    return SearchResults(store.search(physical, vector.tolist(), limit))
