"""``/health`` (no token: storage, Prefect and Qdrant reachable) and ``/metrics`` (Prometheus, with a token)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from docingest.service.state import Service, ServiceDep, User

router = APIRouter(tags=["operations"])


def check_qdrant() -> None:
    from docingest.core.store import QdrantStore
    from docingest.targets import resolve_location

    QdrantStore(resolve_location()).collection_exists("docingest-health")


def check_prefect() -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        if (error := client.api_healthcheck()) is not None:
            raise error


async def probe(service: Service, check, timeout: float = 15.0) -> bool:
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
async def health(service: ServiceDep):
    """Storage, Prefect and Qdrant reachable (200), else 503 naming what is down."""
    # In deployment mode with an embedded store the deployment's flow runs own the folder (one process at a time), so
    # the service leaves it alone: qdrant is null, "not this process's concern".
    jobs, store = service.jobs, service.store
    checks = [probe(service, store.backend.healthy), probe(service, check_prefect)]
    if not (jobs.mode == "deployment" and not service.settings.qdrant_url):
        checks.append(probe(service, check_qdrant))
    storage, prefect_ok, *rest = await asyncio.gather(*checks)
    qdrant = rest[0] if rest else None
    ok = storage and prefect_ok and qdrant is not False
    body = {"ok": ok, "storage": storage, "storage_kind": store.backend.kind, "prefect": prefect_ok,
            "qdrant": qdrant, "jobs_mode": jobs.mode, "jobs_pending": jobs.pending()}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus_metrics(_: User, service: ServiceDep):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    for state in ("queued", "running", "completed", "failed"):
        service.metrics.jobs.labels(state).set(sum(j.state == state for j in service.jobs.jobs.values()))
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
