"""``POST /api/v1/search``: the same hits as ``docingest search --json``, for collections the token may read.

With an embedded store only one process can open it; while the service runs (and in embedded job mode holds it),
this endpoint is how anything else searches."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from docingest.service.state import ServiceDep, User

router = APIRouter(prefix="/api/v1", tags=["search"])


class SearchRequest(BaseModel):
    collection: str = Field(max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    query: str = Field(min_length=1, max_length=2000)
    limit: int = Field(default=5, ge=1, le=100)
    mode: Literal["dense", "bm25", "hybrid"] | None = Field(
        default=None, description="Default: hybrid where the collection has BM25 vectors, else dense.")
    fusion: Literal["rrf", "dbsf"] = "rrf"


# response_model=None: the return annotation is for the type checker only; FastAPI sends the dict as it is.
@router.post("/search", response_model=None)
async def search(body: SearchRequest, who: User, service: ServiceDep) -> dict[str, Any]:
    """The ``limit`` best chunks for ``query``: ``{"mode", "hits", "note"}``; 403 for a collection the token may not
    read, 404 for one that does not exist, 400 for a search the collection cannot answer (e.g. ``bm25`` on one
    without BM25 vectors), 503 while the store cannot be reached or another process holds the embedded store."""
    from docingest.core.store.store import MANIFEST_SUFFIX
    from docingest.exceptions import ConfigurationError, StoreBusyError, StoreError, UnknownCollectionError
    from docingest.retrieval import search as run_search
    from docingest.service.jobs import scrub_paths

    who.check_read(body.collection)
    if body.collection.endswith(MANIFEST_SUFFIX):  # a collection's bookkeeping, not a collection
        raise HTTPException(404, "collection not found")
    if service.jobs.mode == "deployment" and not service.settings.qdrant.url:
        # The deployment's workers own the embedded store: opening it here would hold it (for this process's life)
        # and fail their runs.
        raise HTTPException(503, "search over HTTP needs a Qdrant server in deployment mode (DOCINGEST_QDRANT_URL)")
    try:
        hits = await asyncio.to_thread(run_search, body.query, body.collection, body.limit,
                                       qdrant=service.qdrant, mode=body.mode, fusion=body.fusion)
    except StoreBusyError:
        raise HTTPException(503, "the embedded store is held by another process; give the service and the "
                                 "workers a Qdrant server (DOCINGEST_QDRANT_URL)") from None
    except UnknownCollectionError:
        raise HTTPException(404, "collection not found") from None
    except ConfigurationError as exc:
        raise HTTPException(400, scrub_paths(str(exc))[:300]) from None
    except StoreError:
        raise HTTPException(503, "the store cannot be reached; retry later") from None
    return {**hits.to_json_dict(), "note": hits.note}
