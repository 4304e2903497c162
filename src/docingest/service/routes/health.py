"""``/health`` (no token: up or down; with a token: storage, Prefect, Qdrant and the caller's pending jobs) and
``/metrics`` (Prometheus, with a token). A health check never starts anything: not Prefect's temporary server, not
an embedded store this process has not opened yet."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from docingest.service.auth import bearer
from docingest.service.state import Service, ServiceDep, User

router = APIRouter(tags=["operations"])


def check_qdrant() -> None:
    """A server answers; an embedded store is asked only when this process already holds it open (else its folder
    must be writable): opening it here would take it from the flow runs that need it."""
    import os

    from docingest.core.store import QdrantStore
    from docingest.core.store.store import is_open
    from docingest.targets import resolve_location

    location = resolve_location()
    if location.url or is_open(location):
        QdrantStore(location).collection_exists("docingest-health")
        return
    folder = location.path
    if folder is None:
        return
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise PermissionError("the embedded store's folder is not writable")


def prefect_started() -> bool:
    """False when runs would use a temporary Prefect API that is not running yet (it starts with the first job)."""
    from prefect.settings import get_current_settings

    from docingest import ephemeral

    return bool(get_current_settings().api.url) or bool(ephemeral.temporary_servers())


def check_prefect() -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        if (error := client.api_healthcheck()) is not None:
            raise error


async def probe(service: Service, check: Callable[[], object], timeout: float = 15.0) -> bool:
    """Run a check off the event loop; concurrent health calls share one probe of each dependency."""
    task = service.probes.get(check)
    if task is None or task.done():
        task = service.probes[check] = asyncio.ensure_future(asyncio.to_thread(check))
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure is "down"; the body never says why (no internals)
        return False


@router.get("/health")
async def health(service: ServiceDep,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None) -> JSONResponse:
    """200 ``{"ok": true}`` when storage, Prefect and Qdrant are reachable, else 503 ``{"ok": false}``. With a valid
    token the body names each check and the caller's pending jobs."""
    # In deployment mode with an embedded store the deployment's flow runs own the folder (one process at a time), so
    # the service leaves it alone: qdrant is null, "not this process's concern". Prefect is null while the temporary
    # API this process would start for its first job is not running.
    jobs, store = service.jobs, service.store
    checks = [probe(service, store.backend.healthy)]
    prefect_up = prefect_started()
    if prefect_up:
        checks.append(probe(service, check_prefect))
    qdrant_ours = not (jobs.mode == "deployment" and not service.settings.qdrant.url)
    if qdrant_ours:
        checks.append(probe(service, check_qdrant))
    outcomes = iter(await asyncio.gather(*checks))
    storage = next(outcomes)
    prefect_ok = next(outcomes) if prefect_up else None
    qdrant = next(outcomes) if qdrant_ours else None
    ok = storage and prefect_ok is not False and qdrant is not False
    status = 200 if ok else 503
    try:
        who = await service.caller(credentials.credentials) if credentials else None
    except HTTPException:
        who = None
    if who is None:
        return JSONResponse({"ok": ok}, status_code=status)
    body = {"ok": ok, "storage": storage, "storage_kind": store.backend.kind, "prefect": prefect_ok,
            "qdrant": qdrant, "jobs_mode": jobs.mode,
            "jobs_pending": sum(j.state in ("queued", "running") for j in jobs.list(who.user))}
    return JSONResponse(body, status_code=status)


@router.get("/metrics")
async def prometheus_metrics(_: User, service: ServiceDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    for state, count in service.jobs.counts().items():
        service.metrics.jobs.labels(state).set(count)
    service.metrics.runs.set(service.jobs.runs_in_progress())
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
