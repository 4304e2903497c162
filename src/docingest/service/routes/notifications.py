"""Live sources over HTTP: ``POST /api/v1/notifications/s3`` takes a bucket's event notifications in MinIO's webhook
format (S3's event records; MinIO sends its target's ``auth_token`` as the bearer token) and queues each named object
on the ``serve --watch`` sources of its bucket and prefix; ``GET /api/v1/watches`` says how those sources stand."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from docingest.service.state import ServiceDep, User

router = APIRouter(prefix="/api/v1", tags=["live sources"])

CHANGES = ("s3:ObjectCreated:", "s3:ObjectRemoved:", "ObjectCreated:", "ObjectRemoved:")  # MinIO's, AWS's names


class _Named(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = ""


class _Object(BaseModel):
    model_config = ConfigDict(extra="ignore")
    key: str = ""


class _S3(BaseModel):
    model_config = ConfigDict(extra="ignore")
    bucket: _Named = Field(default_factory=_Named)
    object: _Object = Field(default_factory=_Object)


class EventRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")
    eventName: str = ""  # noqa: N815 - S3's own field names
    s3: _S3 = Field(default_factory=_S3)


class Notification(BaseModel):
    """A bucket notification as MinIO's webhook target posts it (``EventName``, ``Key`` and S3's ``Records``)."""

    model_config = ConfigDict(extra="ignore")
    EventName: str = ""  # noqa: N815
    Key: str = ""  # noqa: N815
    Records: list[EventRecord] = Field(default_factory=list, max_length=1000)  # noqa: N815


@router.post("/notifications/s3", status_code=202, response_model=None)
async def s3_notification(body: Notification, who: User, service: ServiceDep) -> dict[str, Any]:
    """Queue the objects a bucket notification names on the watches of their bucket and prefix: ``{"queued",
    "ignored", "collections"}``. Created, overwritten and removed objects are synced as a check of the listing would
    find them (the notification only says where to look: a late or repeated one costs a check, never a wrong
    result). 403 unless the token may write every collection the notification reaches (nothing is queued then);
    objects under no watched bucket and prefix, and other events, are ignored (202: the sender need not retry)."""
    watches = service.watches
    found, ignored = [], 0
    for record in body.Records:
        key = unquote_plus(record.s3.object.key)  # S3 and MinIO URL-encode the key in event records
        hits = watches.notify(record.s3.bucket.name, key) if watches and record.eventName.startswith(CHANGES) else []
        found += hits
        ignored += not hits
    for collection in sorted({live.collection for live, _ in found}):
        who.check_write(collection)
    for live, path in found:
        live.changed(path)
    return {"queued": len(found), "ignored": ignored, "collections": sorted({live.collection for live, _ in found})}


@router.get("/watches", response_model=None)
async def list_watches(who: User, service: ServiceDep) -> dict[str, list[dict[str, Any]]]:
    """The live sources (``serve --watch``) of the collections the token may read: state (starting, ready, failed,
    stopped), documents, batches run, and a failed one's error."""
    if service.watches is None:
        return {"watches": []}
    return {"watches": [w.public() for w in service.watches.watched if who.may_read(w.live.collection)]}


