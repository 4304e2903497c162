"""Create docingest's work pools and priority queues on the Prefect server at PREFECT_API_URL (idempotent).

    python deployments/setup_pools.py [POOL ...]      (default: local-pool docker-pool k8s-pool)

Pools: local-pool (process), docker-pool (docker), k8s-pool (kubernetes). Queues in each, by priority: critical (1),
high (2), normal (3), low (4), default (5). A worker always takes the scheduled runs of the lowest number first, so a
run sent to `critical` jumps ahead of everything waiting in the other queues.
"""

from __future__ import annotations

import asyncio
import sys

POOL_TYPES = {"local-pool": "process", "docker-pool": "docker", "k8s-pool": "kubernetes"}
QUEUES = ("critical", "high", "normal", "low", "default")


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


if __name__ == "__main__":
    asyncio.run(setup(sys.argv[1:] or list(POOL_TYPES)))
