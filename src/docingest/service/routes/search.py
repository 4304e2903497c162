"""``POST /api/v1/search``: the same hits as ``docingest search --json``, for collections the token may read.

With an embedded store only one process can open it; while the service runs (and in embedded job mode holds it),
this endpoint is how anything else searches."""

from __future__ import annotations

import asyncio
from typing import Literal

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


@router.post("/search")
async def search(body: SearchRequest, who: User, service: ServiceDep):
    """The ``limit`` best chunks for ``query``: ``{"mode", "hits", "note"}``; 403 for a collection the token may not
    read, 404 for one that does not exist, 503 while another process holds the embedded store."""
    from docingest.exceptions import StoreBusyError, UnknownCollectionError
    from docingest.retrieval import search as run_search

    who.check_read(body.collection)
    try:
        hits = await asyncio.to_thread(run_search, body.query, body.collection, body.limit,
                                       qdrant_url=service.settings.qdrant_url, mode=body.mode, fusion=body.fusion)
    except StoreBusyError:
        raise HTTPException(503, "the embedded store is held by another process; give the service and the "
                                 "workers a Qdrant server (DOCINGEST_QDRANT_URL)") from None
    except UnknownCollectionError:
        raise HTTPException(404, "collection not found") from None
    return {**hits.to_json_dict(), "note": hits.note}
