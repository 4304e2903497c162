"""The upload service: resumable uploads that become searchable documents (FastAPI; run with ``docingest serve``).

Every endpoint but ``/health`` needs ``Authorization: Bearer <JWT>``: HS256 with ``DOCINGEST_JWT_SECRET``, or
RS256/ES256 with the keys of ``DOCINGEST_JWT_JWKS_URL``; the user is the ``sub`` claim. A user's uploads and jobs are
invisible to others: another user's id is "not found".
"""


import asyncio
import base64
import hashlib
import json
import threading
import time
from collections import defaultdict, deque
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from docingest.service.jobs import JobManager
from docingest.service.uploads import PRIORITIES, UploadError, make_store
from docingest.settings import DocingestSettings, get_settings

DEFAULT_ALLOWED = ("pdf", "docx", "pptx", "xlsx", "odt", "md", "markdown", "txt", "html", "htm", "csv", "adoc",
                   "asciidoc", "xml", "png", "jpg", "jpeg", "tif", "tiff")


class CreateUpload(BaseModel):
    filename: str = Field(max_length=1000)
    size: int = Field(gt=0)
    content_type: str = Field(default="", max_length=200)
    collection: str = Field(max_length=63)
    priority: str = Field(default="normal", description="critical | high | normal | low")


class CompleteUpload(BaseModel):
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


class RateLimiter:
    """Sliding one-minute windows per (user, bucket); ``check`` raises 429 with Retry-After."""

    def __init__(self) -> None:
        self.hits: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def check(self, user: str, bucket: str, per_minute: int) -> None:
        now = time.monotonic()
        with self.lock:
            window = self.hits[(user, bucket)]
            while window and now - window[0] >= 60:
                window.popleft()
            if len(window) >= per_minute:
                retry = max(1, int(60 - (now - window[0])) + 1)
                raise HTTPException(429, f"rate limit: {per_minute} {bucket} per minute",
                                    headers={"Retry-After": str(retry)})
            window.append(now)


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    r = CollectorRegistry()
    return {
        "registry": r,
        "uploads": Counter("docingest_uploads_total", "Uploads by outcome.", ["outcome"], registry=r),
        "bytes": Counter("docingest_upload_bytes_total", "Bytes received in parts.", registry=r),
        "parts": Counter("docingest_upload_parts_total", "Parts received.", registry=r),
        "md5": Counter("docingest_upload_md5_rejects_total", "Parts rejected for a Content-MD5 mismatch.",
                       registry=r),
        "jobs": Gauge("docingest_jobs", "Jobs by state.", ["state"], registry=r),
        "latency": Histogram("docingest_request_seconds", "Request latency.", ["method", "route", "status"],
                             registry=r),
    }


def _stop_temporary_prefect() -> None:
    """Stop Prefect's temporary API server if the jobs started one: uvicorn ends the process by re-raising SIGTERM,
    which skips the atexit hook that would otherwise stop it (it would outlive the service)."""
    from docingest import ephemeral

    for server in ephemeral.temporary_servers():
        server.stop()


def create_app(settings: DocingestSettings | None = None) -> FastAPI:
    import jwt

    settings = settings or get_settings()
    if not settings.jwt_secret and not settings.jwt_jwks_url:
        from docingest.exceptions import ConfigurationError

        raise ConfigurationError("the upload service needs DOCINGEST_JWT_SECRET (HS256 key for bearer tokens) or "
                                 "DOCINGEST_JWT_JWKS_URL (an identity provider's keys)")
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300, timeout=10) \
        if settings.jwt_jwks_url else None
    root = settings.upload_dir or settings.home / "uploads"
    store = make_store(settings, set(settings.upload_allowed_types or DEFAULT_ALLOWED))
    jobs = JobManager(root / "jobs", store, deployment=settings.upload_deployment)
    limiter = RateLimiter()
    metrics = _metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def expire_loop():
            import logging

            while True:
                try:
                    await asyncio.to_thread(store.expire)
                except Exception:  # noqa: BLE001 - e.g. the store is briefly unreachable: try again next round
                    logging.getLogger("docingest.service").exception("expiring abandoned uploads failed")
                await asyncio.sleep(300)

        task = asyncio.create_task(expire_loop())
        yield
        task.cancel()
        await asyncio.to_thread(jobs.close)  # finish the running job; queued ones stay on disk for the next start
        await asyncio.to_thread(_stop_temporary_prefect)

    app = FastAPI(title="docingest upload service", version="1", lifespan=lifespan,
                  description="Resumable uploads that become searchable documents.")
    app.state.store, app.state.jobs = store, jobs

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError):
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception):  # never a traceback or an internal path in a body
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.upload_part_size + 1024 * 1024 \
                and not request.url.path.startswith("/api/v1/documents"):
            return JSONResponse({"detail": "request body too large"}, status_code=413)
        if request.url.path.startswith(("/api/", "/metrics")):
            # Authenticate before anything else, so an anonymous caller learns nothing (not even validation errors).
            try:
                header = request.headers.get("authorization")
                # A JWKS lookup may fetch the provider's keys over the network: never on the event loop.
                request.state.user = await asyncio.to_thread(authenticate, header) if jwks is not None \
                    else authenticate(header)
            except HTTPException as exc:
                return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics["latency"].labels(request.method, getattr(route, "path", "unmatched"),
                                  str(response.status_code)).observe(time.perf_counter() - started)
        return response

    def authenticate(authorization: str | None) -> str:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        token = authorization[7:].strip()
        checks = {"options": {"require": ["sub", "exp"]}, "audience": settings.jwt_audience,
                  "issuer": settings.jwt_issuer}
        try:
            if jwks is not None and jwt.get_unverified_header(token).get("alg") != "HS256":
                key = jwks.get_signing_key_from_jwt(token).key  # cached; refetched for an unknown key id
                claims = jwt.decode(token, key, algorithms=["RS256", "ES256", "PS256", "EdDSA"], **checks)
            elif secret is not None:
                claims = jwt.decode(token, secret, algorithms=["HS256"], **checks)
            else:
                raise jwt.InvalidTokenError("no key for this token")
        except jwt.PyJWKClientConnectionError:
            raise HTTPException(503, "the identity provider's keys are unreachable; retry later") from None
        except (jwt.PyJWTError, ValueError):
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"}) from None
        return str(claims["sub"])

    def user(request: Request) -> str:
        name = getattr(request.state, "user", None) or authenticate(request.headers.get("authorization"))
        limiter.check(name, "requests", settings.rate_limit_requests_per_min)
        return name

    User = Annotated[str, Depends(user)]

    def upload_view(meta) -> dict:
        return {"upload_id": meta.upload_id, "filename": meta.filename, "size": meta.size,
                "collection": meta.collection, "priority": meta.priority, "part_size": meta.part_size,
                "parts": meta.parts, "received": store.received(meta), "missing": store.missing(meta),
                "completed": meta.completed, "job_id": meta.job_id}

    def start_job(who: str, meta, document: str) -> dict:
        job = jobs.submit(who, meta.upload_id, meta.collection, document, meta.priority)
        meta.job_id = job.job_id
        store.save(meta)
        metrics["uploads"].labels("completed").inc()
        return {"job_id": job.job_id, "upload_id": meta.upload_id, "document": job.document}

    def check_qdrant() -> None:
        from docingest.core.store import QdrantStore
        from docingest.targets import resolve_location

        QdrantStore(resolve_location()).collection_exists("docingest-health")

    def check_prefect() -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            if (error := client.api_healthcheck()) is not None:
                raise error

    probes: dict = {}  # check -> its running task: concurrent health calls share one probe of each dependency

    async def probe(check, timeout: float = 15.0) -> bool:
        task = probes.get(check)
        if task is None or task.done():
            task = probes[check] = asyncio.ensure_future(asyncio.to_thread(check))
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure is "down"; the body never says why (no internals)
            return False

    @app.get("/health")
    async def health():
        """Storage, Prefect and Qdrant reachable (200), else 503 naming what is down."""
        # In deployment mode with Qdrant local mode the deployment's flow runs own the folder (one process at a
        # time), so the service leaves it alone: qdrant is null, "not this process's concern".
        local_qdrant = not settings.qdrant_url
        checks = [probe(store.backend.healthy), probe(check_prefect)]
        if not (jobs.mode == "deployment" and local_qdrant):
            checks.append(probe(check_qdrant))
        storage, prefect_ok, *rest = await asyncio.gather(*checks)
        qdrant = rest[0] if rest else None
        ok = storage and prefect_ok and qdrant is not False
        body = {"ok": ok, "storage": storage, "storage_kind": store.backend.kind, "prefect": prefect_ok,
                "qdrant": qdrant, "jobs_mode": jobs.mode, "jobs_pending": jobs.pending()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus_metrics(_: User):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for state in ("queued", "running", "completed", "failed"):
            metrics["jobs"].labels(state).set(sum(j.state == state for j in jobs.jobs.values()))
        return Response(generate_latest(metrics["registry"]), media_type=CONTENT_TYPE_LATEST)

    @app.post("/api/v1/uploads", status_code=201)
    async def create_upload(body: CreateUpload, who: User):
        limiter.check(who, "uploads", settings.rate_limit_uploads_per_min)
        meta = await asyncio.to_thread(store.create, who, body.filename, body.size, body.content_type,
                                       body.collection, body.priority)
        metrics["uploads"].labels("created").inc()
        return {"upload_id": meta.upload_id, "part_size": meta.part_size, "parts": meta.parts,
                "filename": meta.filename}

    @app.put("/api/v1/uploads/{upload_id}/parts/{number}")
    async def put_part(upload_id: str, number: int, request: Request, who: User,
                       content_md5: Annotated[str | None, Header(alias="Content-MD5")] = None):
        data = bytearray()
        async for piece in request.stream():  # bounded even without Content-Length (chunked transfer encoding)
            data += piece
            if len(data) > settings.upload_part_size:
                raise UploadError(413, "request body too large")
        data = bytes(data)
        try:
            etag = await asyncio.to_thread(store.put_part, who, upload_id, number, data, content_md5)
        except UploadError as exc:
            if "mismatch" in exc.message:
                metrics["md5"].inc()
            raise
        metrics["parts"].inc()
        metrics["bytes"].inc(len(data))
        return {"etag": etag, "part": number}

    @app.get("/api/v1/uploads/{upload_id}")
    async def get_upload(upload_id: str, who: User):
        return upload_view(await asyncio.to_thread(store.get, who, upload_id))

    def complete_and_start(who: str, upload_id: str, sha256: str | None) -> dict:
        with store.lock(upload_id):  # a second completion of the same upload waits, then gets 409
            meta = store.get(who, upload_id)
            if meta.completed and meta.job_id is None:
                # Assembled and checked earlier, but its job was not accepted then (503): start it now.
                return start_job(who, meta, store.document(meta))
            jobs.check_capacity()  # before assembling: a refused job must not leave a completed upload behind
            meta, document = store.complete(who, upload_id, sha256)
            return start_job(who, meta, document)

    @app.post("/api/v1/uploads/{upload_id}/complete")
    async def complete_upload(upload_id: str, who: User, body: CompleteUpload | None = None):
        return await asyncio.to_thread(complete_and_start, who, upload_id, body.sha256 if body else None)

    @app.delete("/api/v1/uploads/{upload_id}", status_code=204)
    async def abort_upload(upload_id: str, who: User):
        await asyncio.to_thread(store.abort, who, upload_id)
        metrics["uploads"].labels("aborted").inc()
        return Response(status_code=204)

    @app.post("/api/v1/documents", status_code=201)
    async def upload_document(who: User, file: Annotated[UploadFile, File()],
                              collection: Annotated[str, Form()], priority: Annotated[str, Form()] = "normal"):
        limiter.check(who, "uploads", settings.rate_limit_uploads_per_min)
        data = await file.read(settings.upload_max_bytes + 1)
        if not data or len(data) > settings.upload_max_bytes:
            raise UploadError(413, f"size must be between 1 and {settings.upload_max_bytes} bytes")

        def store_all():
            meta = store.create(who, file.filename or "upload", len(data), file.content_type or "", collection,
                                priority)
            for n in range(1, meta.parts + 1):
                part = data[(n - 1) * meta.part_size: n * meta.part_size]
                store.put_part(who, meta.upload_id, n, part, base64.b64encode(hashlib.md5(part).digest()).decode())
            return complete_and_start(who, meta.upload_id, None)

        jobs.check_capacity()
        return await asyncio.to_thread(store_all)

    @app.get("/api/v1/jobs/{job_id}")
    async def get_job(job_id: str, who: User):
        job = jobs.get(who, job_id)
        if job is None:
            raise HTTPException(404, "job not found")
        return job.public()

    @app.get("/api/v1/jobs")
    async def list_jobs(who: User):
        return {"jobs": [j.public() for j in jobs.list(who)]}

    @app.websocket("/api/v1/ws/jobs")
    async def job_updates(ws: WebSocket):
        """Send ``{"token": JWT, "subscribe": [job ids]}`` first; then job messages arrive as they happen."""
        await ws.accept()
        try:
            hello = json.loads(await asyncio.wait_for(ws.receive_text(), timeout=30))
            who = await asyncio.to_thread(authenticate, f"Bearer {hello.get('token', '')}")  # JWKS: off the loop
            limiter.check(who, "requests", settings.rate_limit_requests_per_min)
        except (TimeoutError, HTTPException, ValueError):
            await ws.close(code=4401)
            return
        ids = {j for j in hello.get("subscribe", []) if isinstance(j, str) and jobs.get(who, j) is not None}
        queue = jobs.subscribe(ids)

        async def forward():
            for job_id in sorted(ids):  # the current state first, then changes
                await ws.send_json({"type": "job", **jobs.get(who, job_id).public()})
            while True:
                await ws.send_json(await queue.get())

        async def until_closed():  # notice a client that leaves, even while no message is due
            while True:
                if (await ws.receive()).get("type") == "websocket.disconnect":
                    return

        tasks = [asyncio.create_task(forward()), asyncio.create_task(until_closed())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            jobs.unsubscribe(queue)

    app.state.priorities = PRIORITIES
    return app
