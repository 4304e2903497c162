"""The upload service: resumable uploads that become searchable documents (FastAPI; run with ``docingest serve``).

Every endpoint but ``/health`` needs ``Authorization: Bearer <JWT>`` (see ``service/auth.py``); the user is the
``sub`` claim. A user's uploads and jobs are invisible to others: another user's id is "not found". The endpoints
live in ``service/routes/``; what they share, and the ``User`` dependency, in ``service/state.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from docingest import store_reads  # noqa: F401 - the store the service holds answers other processes' reads
from docingest.core.formats import NOT_UPLOADABLE, UPLOADABLE
from docingest.exceptions import ConfigurationError
from docingest.folders import check_writable, home_folder, store_folder, upload_folder
from docingest.live import WatchOptions
from docingest.service import tempdir
from docingest.service.auth import Authenticator
from docingest.service.bodies import BodyLimit, validation_error
from docingest.service.jobs import JobManager
from docingest.service.metrics import ServiceMetrics
from docingest.service.ratelimit import RateLimits
from docingest.service.routes import health, jobs, notifications, search, uploads
from docingest.service.state import Service
from docingest.service.uploads import PRIORITIES, UploadError, make_store
from docingest.service.watches import Watches
from docingest.settings import DocingestSettings, get_settings
from docingest.targets import QdrantTarget


def create_app(settings: DocingestSettings | None = None, watch: list[str] | None = None,
               watch_options: WatchOptions | None = None) -> FastAPI:
    """The service's app. ``watch``: live sources (``SOURCE=COLLECTION``) kept in sync in this process, checked as
    ``watch_options`` say (see ``service/watches.py``)."""
    settings = settings or get_settings()
    # Prefect, the Qdrant target and the flow are imported here, once: imported for the first time from the health
    # probes' and the jobs' threads at once, Prefect's package initialisation races with itself.
    import prefect.client.orchestration  # noqa: F401

    import docingest.flows.ingest  # noqa: F401
    import docingest.targets  # noqa: F401

    auth = Authenticator(settings)  # a configuration error before anything is created
    check_writable(home_folder(settings), upload_folder(settings),
                   *([] if settings.qdrant.url else [store_folder(settings.resolved_qdrant_path(), settings)]))
    store = make_store(settings, allowed_upload_types(settings))
    root = settings.upload.dir or settings.home / "uploads"
    watches = None
    if watch:
        if settings.upload.deployment and not settings.qdrant.url:
            raise ConfigurationError("--watch with DOCINGEST_UPLOAD_DEPLOYMENT needs a Qdrant server "
                                     "(DOCINGEST_QDRANT_URL): the deployment's workers own the embedded store")
        watches = Watches(watch, watch_options or WatchOptions(),
                          QdrantTarget(url=settings.qdrant.url) if settings.qdrant.url else None)
    service = Service(settings, store, JobManager(root / "jobs", store, deployment=settings.upload.deployment,
                                                   concurrency=settings.upload.job_concurrency,
                                                   parse_timeout_s=settings.upload.parse_timeout_s),
                      auth, RateLimits(), ServiceMetrics(), watches=watches)
    app = FastAPI(title="docingest upload service", version="1", lifespan=_lifespan,
                  description="Resumable uploads that become searchable documents.")
    app.state.service, app.state.store, app.state.jobs, app.state.priorities = service, store, service.jobs, PRIORITIES
    app.add_exception_handler(UploadError, _upload_error)  # type: ignore[arg-type]  # Starlette types the base
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(BodyLimit, settings=settings)
    service.metrics.instrument(app)
    for module in (health, uploads, jobs, search, notifications):
        app.include_router(module.router)
    return app


def allowed_upload_types(settings: DocingestSettings) -> set[str]:
    """The extensions uploads accept: DOCINGEST_UPLOAD_ALLOWED_TYPES, or by default every format ingest reads whose
    content the uploads can check (core/formats.py names and explains the others)."""
    if not settings.upload.allowed_types:
        return set(UPLOADABLE)
    chosen = {t.lower().lstrip(".") for t in settings.upload.allowed_types}
    if refused := sorted(chosen - UPLOADABLE):
        why = ("macro-enabled or legacy Office files are never uploadable" if set(refused) <= NOT_UPLOADABLE
               else "uploads accept only formats docingest reads and can check")
        raise ConfigurationError(f"DOCINGEST_UPLOAD_ALLOWED_TYPES lists {', '.join('.' + e for e in refused)}: {why}")
    return chosen


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: Service = app.state.service
    task = asyncio.create_task(_expire_loop(service))
    if service.watches is not None:
        service.watches.start(service.jobs.prefect_ready)
    yield
    task.cancel()
    if service.watches is not None:
        await asyncio.to_thread(service.watches.stop)  # their batches end (or are abandoned) before the store closes
    await asyncio.to_thread(service.jobs.close)  # finish the running job; queued ones stay on disk for the next start
    await asyncio.to_thread(_stop_temporary_prefect)
    tempdir.remove()


async def _expire_loop(service: Service) -> None:
    while True:
        try:
            await asyncio.to_thread(service.store.expire)
            await asyncio.to_thread(service.jobs.expire, service.settings.upload.expiry_s)
        except Exception:  # noqa: BLE001 - e.g. the store is briefly unreachable: try again next round
            logging.getLogger("docingest.service").exception("expiring abandoned uploads failed")
        await asyncio.sleep(300)


async def _upload_error(_: Request, exc: UploadError) -> JSONResponse:
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # never a traceback or an internal path in a body
    return JSONResponse({"detail": "internal error"}, status_code=500)


def _stop_temporary_prefect() -> None:
    """Stop Prefect's temporary API server if the jobs started one: uvicorn ends the process by re-raising SIGTERM,
    which skips the atexit hook that would otherwise stop it (it would outlive the service)."""
    from docingest import ephemeral

    ephemeral.stop_temporary_servers()
