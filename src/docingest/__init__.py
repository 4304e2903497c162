"""docingest: keep a Qdrant collection in sync with a document store, on Prefect, Docling and sentence-transformers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Prefect gives its temporary API server 20 s to start; on a fresh database a slow 2-CPU machine needs more (23 s
# measured here), and every run, the Python API and the upload service then fail at once. A user's value wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

__version__ = "0.1.0"
# Bump when the payload or chunking logic changes in a way that must re-process every document.
__version_schema__ = "1"

__all__ = [
    "IngestOptions",
    "IngestResult",
    "SearchHit",
    "SearchResults",
    "__version__",
    "ingest",
    "ingest",
    "ingest_documents",
    "search",
]

if TYPE_CHECKING:
    from docingest.api import ingest, search
    from docingest.datamodel import IngestResult, SearchHit, SearchResults
    from docingest.flows.ingest import ingest_documents
    from docingest.options import IngestOptions


def __getattr__(name: str) -> Any:
    # Lazy: `import docingest` stays cheap; Prefect, Docling and torch load on first use.
    if name == "ingest_documents":
        from docingest.flows.ingest import ingest_documents

        return ingest_documents
    if name in ("ingest", "search"):
        from docingest import api

        return getattr(api, name)
    if name in ("IngestResult", "SearchHit", "SearchResults"):
        from docingest import datamodel

        return getattr(datamodel, name)
    if name == "IngestOptions":
        from docingest.options import IngestOptions

        return IngestOptions
    raise AttributeError(name)
