"""The store: Qdrant collections, points and per-document manifests behind one interface, with two backends —
Qdrant Edge embedded in the process (the default, a folder) and a Qdrant server (qdrant-client)."""

from docingest.core.store.backend import Backend, Maintenance, QdrantLocation, Record, Search, StoredPoint, Where
from docingest.core.store.store import MANIFEST_SUFFIX, PAYLOAD_INDEXES, QdrantStore, close_backends, open_backend

__all__ = ["MANIFEST_SUFFIX", "PAYLOAD_INDEXES", "Backend", "Maintenance", "QdrantLocation", "QdrantStore", "Record",
           "Search", "StoredPoint", "Where", "close_backends", "open_backend"]
