"""BM25 sparse vectors, computed in the process from the same text the dense model embeds: one implementation for
both store backends (Qdrant Edge's ``Bm25``: tokenizer, stopwords and stemmer per language; no download). The
engine holding the vectors applies the IDF (the collection's sparse vector has the IDF modifier)."""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING

from docingest.exceptions import ConfigurationError

if TYPE_CHECKING:
    from docingest.core.store import QdrantStore

SPARSE_VECTOR = "bm25"  # the named sparse vector of a collection
DEFAULT_LANGUAGE = "english"

Sparse = tuple[list[int], list[float]]  # (indices, values)


class SparseEncoder:
    """BM25 term weights for documents and queries in one language."""

    def __init__(self, language: str = DEFAULT_LANGUAGE) -> None:
        from qdrant_edge import Bm25, Bm25Config

        self.language = language
        try:
            self._model = Bm25(Bm25Config(language=language))
        except ValueError as exc:
            raise ConfigurationError(f"BM25 language {language!r}: {exc}") from exc
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """What produced a point's sparse vector (kept in its payload as ``sparse_model``)."""
        return model_name(self.language)

    def documents(self, texts: list[str]) -> list[Sparse]:
        with self._lock:
            vectors = [self._model.embed_document(text) for text in texts]
        return [(list(v.indices), list(v.values)) for v in vectors]

    def query(self, text: str) -> Sparse:
        with self._lock:
            vector = self._model.embed_query(text)
        return list(vector.indices), list(vector.values)


def model_name(language: str) -> str:
    """The ``sparse_model`` payload value of a point whose BM25 vector is of ``language``."""
    return f"bm25:{language}"


def sparse_text(headings: list[str], text: str) -> str:
    """What a chunk's BM25 vector is made of: its headings and text, as the dense model reads them (Docling's
    contextualised chunk). Rebuilt from the payload when stored points gain their sparse vector later."""
    return "\n".join([*headings, text])


@lru_cache(maxsize=8)
def encoder(language: str = DEFAULT_LANGUAGE) -> SparseEncoder:
    """The encoder of a language (one per process)."""
    return SparseEncoder(language)


def sparse_complete(store: QdrantStore, physical: str, language: str) -> bool:
    """Whether every stored point of ``physical`` already has a BM25 vector of ``language`` (so a sync has none to
    add): the collection has the sparse vector, and no point lacks it or has another language's."""
    if SPARSE_VECTOR not in store.sparse_vectors(physical):
        return False
    return next(iter(store.without_sparse(physical, model_name(language), page=1)), None) is None


def add_sparse_vectors(store: QdrantStore, physical: str, language: str, page: int = 256) -> int | None:
    """Give ``physical``'s stored points a BM25 vector of ``language`` where they have none or another language's:
    made from the stored headings and text, the dense vectors untouched (a collection from before hybrid search gains
    it at its next sync without re-embedding). Returns how many points were updated, or None when the backend cannot
    add a sparse vector to the existing collection."""
    if not store.add_sparse_vector(physical, SPARSE_VECTOR):
        return None
    bm25 = encoder(language)
    updated = 0
    for rows in store.without_sparse(physical, bm25.name, page):
        vectors = bm25.documents([sparse_text(list(p.get("headings") or []), p.get("text") or "") for _, p in rows])
        store.set_sparse(physical, SPARSE_VECTOR, bm25.name,
                         [(pid, idx, val) for (pid, _), (idx, val) in zip(rows, vectors, strict=True)])
        updated += len(rows)
    return updated
