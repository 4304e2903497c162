"""Jobs: one per completed upload; their state by id, a user's list, and live updates over a WebSocket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, HTTPException, WebSocket

from docingest.service.state import ServiceDep, User

router = APIRouter(prefix="/api/v1", tags=["jobs"])


# response_model=None: a route's return annotation is for the type checker only; FastAPI sends the dict as it is
# (without it, FastAPI would make the annotation the response model: validated, and described in the OpenAPI schema).
@router.get("/jobs/{job_id}", response_model=None)
async def get_job(job_id: str, who: User, service: ServiceDep) -> dict[str, Any]:
    job = service.jobs.get(who.user, job_id)
    if job is None:
        raise HTTPException(404, "job not found")
    return job.public()


@router.get("/jobs", response_model=None)
async def list_jobs(who: User, service: ServiceDep) -> dict[str, list[dict[str, Any]]]:
    return {"jobs": [j.public() for j in service.jobs.list(who.user)]}


HELLO_TIMEOUT_S = 5.0
MAX_SUBSCRIBED = 1000
CLOSE_MALFORMED, CLOSE_UNAUTHORIZED, CLOSE_RATE_LIMITED = 4400, 4401, 4429


async def _hello(ws: WebSocket) -> tuple[str, dict] | int:
    """The caller and its hello (``{"token": ..., "subscribe": [...]}``), or the close code to answer with. A client
    that sends ``Authorization: Bearer`` in the handshake is checked before the socket is accepted (refused: HTTP
    403); others must send the hello within HELLO_TIMEOUT_S."""
    service = ws.app.state.service
    header = ws.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    try:
        who = await service.caller(token) if token else None
    except HTTPException:
        return CLOSE_UNAUTHORIZED  # before accept: the handshake is refused
    await ws.accept()
    try:
        hello = json.loads(await asyncio.wait_for(ws.receive_text(), timeout=HELLO_TIMEOUT_S))
    except TimeoutError:
        return CLOSE_UNAUTHORIZED
    except Exception:  # noqa: BLE001 - not text, not JSON, the client left: never a traceback
        return CLOSE_MALFORMED
    if not isinstance(hello, dict):
        return CLOSE_MALFORMED
    try:
        who = who or await service.caller(str(hello.get("token") or ""))
        service.limits.check(who.user, "requests", service.settings.rate_limit.requests_per_min)
    except HTTPException as exc:
        return CLOSE_RATE_LIMITED if exc.status_code == 429 else CLOSE_UNAUTHORIZED
    return who.user, hello


@router.websocket("/ws/jobs")
async def job_updates(ws: WebSocket) -> None:
    """Send ``{"token": JWT, "subscribe": [job ids]}`` first (or the token as ``Authorization: Bearer`` in the
    handshake and ``{"subscribe": [...]}``); then job messages arrive as they happen."""
    jobs = ws.app.state.service.jobs
    outcome = await _hello(ws)
    if isinstance(outcome, int):
        await ws.close(code=outcome)
        return
    who, hello = outcome
    wanted = hello.get("subscribe")
    wanted = wanted[:MAX_SUBSCRIBED] if isinstance(wanted, list) else []
    ids = {j for j in wanted if isinstance(j, str) and jobs.get(who, j) is not None}
    queue = jobs.subscribe(ids)

    async def forward() -> None:
        for job_id in sorted(ids):  # the current state first, then changes
            await ws.send_json({"type": "job", **jobs.get(who, job_id).public()})
        while True:
            await ws.send_json(await queue.get())

    async def until_closed() -> None:  # notice a client that leaves, even while no message is due
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
