"""Search over a collection: dense (the model the collection was built with), BM25 (exact terms) or hybrid (both,
fused by the engine), the same on both store backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from docingest.core.embed import embed_texts, load_model
from docingest.core.sparse import SPARSE_VECTOR, encoder
from docingest.core.store import QdrantStore, Search
from docingest.datamodel import SearchHit, SearchResults
from docingest.exceptions import ConfigurationError, StoreBusyError, StoreError
from docingest.settings import get_settings

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from docingest.targets import QdrantTarget

MODES = ("dense", "bm25", "hybrid")
FUSIONS = ("rrf", "dbsf")


def collection_model(store: QdrantStore, collection: str) -> tuple[str | None, str]:
    """The embedding model and backend recorded in the collection's points, if any."""
    return store.collection_model(collection)


def choose_mode(store: QdrantStore, physical: str, mode: str | None, fusion: str = "rrf"
                ) -> tuple[str, str | None, str | None]:
    """(mode, BM25 language, note): the mode asked for, or by default hybrid where the collection's points carry
    BM25 vectors and dense where they do not (the note says why). ConfigurationError for a mode the collection
    cannot answer or an unknown mode or fusion."""
    if mode is not None and mode not in MODES:
        raise ConfigurationError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    if fusion not in FUSIONS:
        raise ConfigurationError(f"unknown fusion {fusion!r}: use one of {', '.join(FUSIONS)}")
    language = store.sparse_language(physical) if SPARSE_VECTOR in store.sparse_vectors(physical) else None
    if mode in (None, "hybrid", "bm25") and language is None:
        if mode is not None:
            raise ConfigurationError(f"collection {physical!r} has no BM25 vectors (made before hybrid search): "
                                     "use --mode dense, or sync it once to add them")
        return "dense", None, (f"collection {physical!r} has no BM25 vectors yet (made before hybrid search): dense "
                               "search; its next sync adds them")
    return mode or "hybrid", language, None


def make_search(mode: str, vector: npt.NDArray[np.float32] | None, query: str, language: str | None, limit: int,
                fusion: str = "rrf", candidates: int = 0) -> Search:
    sparse = encoder(language).query(query) if mode in ("bm25", "hybrid") and language else None
    dense = [float(x) for x in vector] if mode in ("dense", "hybrid") else None  # type: ignore[union-attr]  # given there
    return Search(limit=limit, dense=dense, sparse=sparse, sparse_name=SPARSE_VECTOR, fusion=fusion,  # type: ignore[arg-type]
                  candidates=candidates)


def search(
    query: str,
    collection: str,
    limit: int = 5,
    qdrant: QdrantTarget | None = None,
    model: str | None = None,
    mode: str | None = None,
    fusion: str = "rrf",
) -> SearchResults:
    """Return the ``limit`` best chunks for ``query``. Raises ConfigurationError for an unknown collection."""
    from docingest.targets import open_store

    try:
        store = open_store(qdrant)
    except StoreBusyError:  # held by another process (a watch, the service): asked through its socket
        from docingest import store_socket
        from docingest.targets import held_socket

        if (holder := held_socket(qdrant)) is None:
            raise
        answer = store_socket.result_of(holder, "search", {"query": query, "collection": collection, "limit": limit,
                                                           "model": model, "mode": mode, "fusion": fusion})
        return SearchResults([SearchHit(**hit) for hit in answer["hits"]], mode=answer["mode"], note=answer["note"])
    store.require_collection(collection)
    for attempt in range(2):
        # The alias is resolved once, so the model read and the query address the same collection even while a
        # migration switches the alias; a collection deleted right after the switch is retried on the new one.
        physical = store.resolve(collection)
        try:
            return _search(store, physical, query, limit, model, mode, fusion)
        except (ConfigurationError, StoreError):
            if attempt or store.resolve(collection) == physical:
                raise
    raise AssertionError("unreachable")


def _search(store: QdrantStore, physical: str, query: str, limit: int, model: str | None, mode: str | None,
            fusion: str) -> SearchResults:
    used, language, note = choose_mode(store, physical, mode, fusion)
    vector = None
    if used != "bm25":  # BM25 alone needs no model
        settings = get_settings()
        recorded, backend = collection_model(store, physical)
        loaded = load_model(model or recorded or settings.embed.model, settings.embed.device, backend)
        vector = embed_texts(loaded, [query])[0]
    hits = store.search(physical, make_search(used, vector, query, language, limit, fusion))
    return SearchResults(hits, mode=used, note=note)
