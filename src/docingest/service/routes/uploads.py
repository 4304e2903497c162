"""Resumable uploads (create, parts with Content-MD5, status, complete, abort) and one-request documents."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from docingest.service.state import Service, ServiceDep, User
from docingest.service.uploads import UploadError, UploadMeta

router = APIRouter(prefix="/api/v1", tags=["uploads"])


class CreateUpload(BaseModel):
    filename: str = Field(max_length=1000)
    size: int = Field(gt=0)
    content_type: str = Field(default="", max_length=200)
    collection: str = Field(max_length=63)
    priority: str = Field(default="normal", description="critical | high | normal | low")


class CompleteUpload(BaseModel):
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


def upload_view(service: Service, meta: UploadMeta) -> dict:
    store = service.store
    return {"upload_id": meta.upload_id, "filename": meta.filename, "size": meta.size,
            "collection": meta.collection, "priority": meta.priority, "part_size": meta.part_size,
            "parts": meta.parts, "received": store.received(meta), "missing": store.missing(meta),
            "completed": meta.completed, "job_id": meta.job_id}


def start_job(service: Service, user: str, meta: UploadMeta, document: str) -> dict:
    job = service.jobs.submit(user, meta.upload_id, meta.collection, document, meta.priority)
    meta.job_id = job.job_id
    service.store.save(meta)
    service.metrics.uploads.labels("completed").inc()
    return {"job_id": job.job_id, "upload_id": meta.upload_id, "document": job.document}


def complete_and_start(service: Service, user: str, upload_id: str, sha256: str | None) -> dict:
    store = service.store
    with store.lock(upload_id):  # a second completion of the same upload waits, then gets 409
        meta = store.get(user, upload_id)
        if meta.completed and meta.job_id is None:
            # Assembled and checked earlier, but its job was not accepted then (503): start it now.
            return start_job(service, user, meta, store.document(meta))
        service.jobs.check_capacity()  # before assembling: a refused job must not leave a completed upload behind
        meta, document = store.complete(user, upload_id, sha256)
        return start_job(service, user, meta, document)


# response_model=None: a route's return annotation is for the type checker only; FastAPI sends the dict as it is
# (without it, FastAPI would make the annotation the response model: validated, and described in the OpenAPI schema).
@router.post("/uploads", status_code=201, response_model=None)
async def create_upload(body: CreateUpload, who: User, service: ServiceDep) -> dict[str, Any]:
    who.check_write(body.collection, body.priority)
    service.limits.check(who.user, "uploads", service.settings.rate_limit.uploads_per_min)
    meta = await asyncio.to_thread(service.store.create, who.user, body.filename, body.size, body.content_type,
                                   body.collection, body.priority)
    service.metrics.uploads.labels("created").inc()
    return {"upload_id": meta.upload_id, "part_size": meta.part_size, "parts": meta.parts, "filename": meta.filename}


@router.put("/uploads/{upload_id}/parts/{number}", response_model=None)
async def put_part(upload_id: str, number: int, request: Request, who: User, service: ServiceDep,
                   content_md5: Annotated[str | None, Header(alias="Content-MD5")] = None) -> dict[str, Any]:
    data = bytearray()
    async for piece in request.stream():  # bounded by BodyLimit as it arrives, chunked or not
        data += piece
    try:
        etag = await asyncio.to_thread(service.store.put_part, who.user, upload_id, number, bytes(data), content_md5)
    except UploadError as exc:
        if "mismatch" in exc.message:
            service.metrics.md5.inc()
        raise
    service.metrics.parts.inc()
    service.metrics.bytes.inc(len(data))
    return {"etag": etag, "part": number}


@router.get("/uploads/{upload_id}", response_model=None)
async def get_upload(upload_id: str, who: User, service: ServiceDep) -> dict[str, Any]:
    return upload_view(service, await asyncio.to_thread(service.store.get, who.user, upload_id))


@router.post("/uploads/{upload_id}/complete", response_model=None)
async def complete_upload(upload_id: str, who: User, service: ServiceDep, body: CompleteUpload | None = None) -> dict[str, Any]:
    return await asyncio.to_thread(complete_and_start, service, who.user, upload_id, body.sha256 if body else None)


@router.delete("/uploads/{upload_id}", status_code=204)
async def abort_upload(upload_id: str, who: User, service: ServiceDep) -> Response:
    await asyncio.to_thread(service.store.abort, who.user, upload_id)
    service.metrics.uploads.labels("aborted").inc()
    return Response(status_code=204)


@router.post("/documents", status_code=201, tags=["documents"], openapi_extra={"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file", "collection"], "properties": {
        "file": {"type": "string", "format": "binary"}, "collection": {"type": "string"},
        "priority": {"type": "string", "default": "normal"}}}}}}}, response_model=None)
async def upload_document(who: User, service: ServiceDep, request: Request) -> dict[str, Any]:
    """A whole document in one multipart request (small files); the same checks and job as a resumable upload.

    The form is read only after the token is checked (a form parameter would make FastAPI read, and spool to disk,
    the whole body first, for anyone)."""
    settings, store = service.settings, service.store
    try:
        form = await request.form(max_files=1, max_fields=4)
    except HTTPException:
        raise
    except Exception:  # noqa: BLE001 - malformed multipart
        raise UploadError(400, "the body is not a multipart form with one file") from None
    file, collection, priority = form.get("file"), form.get("collection"), form.get("priority") or "normal"
    try:
        if not isinstance(file, UploadFile) or not isinstance(collection, str) or not isinstance(priority, str):
            raise UploadError(422, "the form needs a file, a collection and optionally a priority")
        who.check_write(collection, priority)
        service.limits.check(who.user, "uploads", settings.rate_limit.uploads_per_min)
        data = await file.read(settings.upload.max_bytes + 1)
    finally:
        await form.close()
    if not data or len(data) > settings.upload.max_bytes:
        raise UploadError(413, f"size must be between 1 and {settings.upload.max_bytes} bytes")

    def store_all() -> dict[str, Any]:
        meta = store.create(who.user, file.filename or "upload", len(data), file.content_type or "", collection,
                            priority)
        try:
            for n in range(1, meta.parts + 1):
                part = data[(n - 1) * meta.part_size: n * meta.part_size]
                store.put_part(who.user, meta.upload_id, n, part,
                               base64.b64encode(hashlib.md5(part).digest()).decode())
            return complete_and_start(service, who.user, meta.upload_id, None)
        except BaseException:  # nobody can resume or retry an upload they never saw: nothing of it stays behind
            store.forget(who.user, meta.upload_id)
            raise

    service.jobs.check_capacity()
    return await asyncio.to_thread(store_all)
