"""Jobs: one per completed upload; their state by id, a user's list, and live updates over a WebSocket."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, HTTPException, WebSocket

from docingest.service.state import ServiceDep, User

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, who: User, service: ServiceDep):
    job = service.jobs.get(who, job_id)
    if job is None:
        raise HTTPException(404, "job not found")
    return job.public()


@router.get("/jobs")
async def list_jobs(who: User, service: ServiceDep):
    return {"jobs": [j.public() for j in service.jobs.list(who)]}


@router.websocket("/ws/jobs")
async def job_updates(ws: WebSocket):
    """Send ``{"token": JWT, "subscribe": [job ids]}`` first; then job messages arrive as they happen."""
    service = ws.app.state.service
    jobs = service.jobs
    await ws.accept()
    try:
        hello = json.loads(await asyncio.wait_for(ws.receive_text(), timeout=30))
        who = await service.user(str(hello.get("token", "")))
        service.limits.check(who, "requests", service.settings.rate_limit_requests_per_min)
    except (TimeoutError, HTTPException, ValueError, AttributeError):
        await ws.close(code=4401)
        return
    wanted = hello.get("subscribe", [])
    ids = {j for j in (wanted if isinstance(wanted, list) else []) if isinstance(j, str) and jobs.get(who, j) is not None}
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
