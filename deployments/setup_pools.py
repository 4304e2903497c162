"""Create docingest's work pools, priority queues and crash automations on the Prefect server at PREFECT_API_URL
(idempotent).

    python deployments/setup_pools.py [POOL ...]      (default: local-pool docker-pool k8s-pool)

Pools: local-pool (process), docker-pool (docker), k8s-pool (kubernetes). Queues in each, by priority: critical (1),
high (2), normal (3), low (4), default (5). A worker always takes the scheduled runs of the lowest number first, so a
run sent to `critical` jumps ahead of everything waiting in the other queues.

Automations (Prefect's zombie-flow detection, docs/operations.md "Signals, cancel and crash"): an `ingest-documents`
run whose heartbeats stop for ZOMBIE_AFTER_S (its machine, its worker and its process gone together; the deployments
send one every 30 s, PREFECT_FLOWS_HEARTBEAT_FREQUENCY in prefect.yaml) is marked Crashed, and a crashed
`ingest-documents` run is scheduled again (AwaitingRetry) for any worker of its pool to pick up; the flow itself ends a
run that crashed more than DOCINGEST_CRASH_RETRIES times as Failed, so a run that kills its machine is not retried
forever.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

POOL_TYPES = {"local-pool": "process", "docker-pool": "docker", "k8s-pool": "kubernetes"}
QUEUES = ("critical", "high", "normal", "low", "default")
FLOW = "ingest-documents"
ZOMBIE_AFTER_S = 90  # three missed heartbeats at the deployments' 30 s
ZOMBIE = "docingest: crash ingest runs without heartbeats"
RETRY = "docingest: retry crashed ingest runs"


async def setup(pools: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    async with get_client() as client:
        for pool in pools:
            kind = POOL_TYPES.get(pool, "process")
            try:
                await client.read_work_pool(pool)
            except ObjectNotFound:
                template = await get_default_base_job_template_for_infrastructure_type(kind)
                await client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=template or {}))
                print(f"created work pool {pool} ({kind})")
            existing = {q.name: q for q in await client.read_work_queues(work_pool_name=pool)}
            for priority, queue in enumerate(QUEUES, start=1):
                if queue not in existing:
                    await client.create_work_queue(name=queue, work_pool_name=pool, priority=priority)
                    print(f"created queue {pool}/{queue} (priority {priority})")
                elif existing[queue].priority != priority:
                    await client.update_work_queue(existing[queue].id, priority=priority)
            # Priorities can shift when set one by one; set them again in order so they end exactly 1..5.
            for priority, queue in enumerate(QUEUES, start=1):
                current = {q.name: q for q in await client.read_work_queues(work_pool_name=pool)}
                if current[queue].priority != priority:
                    await client.update_work_queue(current[queue].id, priority=priority)


    await setup_automations()


def automations() -> list:
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    ours = {"prefect.resource.role": "flow", "prefect.resource.name": FLOW}
    zombie = Automation(
        name=ZOMBIE,
        description=f"An {FLOW} run that sent no heartbeat for {ZOMBIE_AFTER_S} s (nor reached a final state) is marked "
                    "Crashed: its worker, process or machine is gone.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": ["prefect.flow-run.*"]}, match_related=ours,
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_S)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {ZOMBIE_AFTER_S} s: its worker or machine is gone")],
    )
    retry = Automation(
        name=RETRY,
        description=f"A crashed {FLOW} run is scheduled again (AwaitingRetry), for any worker of its pool; the flow "
                    "fails a run that crashed more than DOCINGEST_CRASH_RETRIES times.",
        trigger=EventTrigger(expect={"prefect.flow-run.Crashed"}, match={"prefect.resource.id": ["prefect.flow-run.*"]},
                             match_related=ours, posture=Posture.Reactive, threshold=1),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED, name="AwaitingRetry",
                                    message="scheduled again after a crash")],
    )
    return [zombie, retry]


async def setup_automations() -> None:
    from prefect.automations import Automation

    for automation in automations():
        try:
            existing = await Automation.aread(name=automation.name)
        except ValueError:  # none of that name
            existing = None
        if existing is not None:
            await existing.adelete()
        await automation.acreate()
        print(f"{'updated' if existing else 'created'} automation {automation.name!r}")


if __name__ == "__main__":
    asyncio.run(setup(sys.argv[1:] or list(POOL_TYPES)))
