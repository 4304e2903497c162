"""The flow's task runner: threads (default) or Dask, chosen from the settings when a run starts.

Prefect fixes a flow's task runner when ``@flow`` decorates it, at import, and duplicates it as each run starts. The
flow is given a ``SettingsTaskRunner``, which duplicates into the runner the settings name at that moment: importing the
flow never needs prefect-dask (nor raises without it), and a process that changes DOCINGEST_TASK_RUNNER between runs
gets what it asked for.
"""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from docingest.exceptions import ClusterUnreachable, ConfigurationError
from docingest.settings import get_settings

if TYPE_CHECKING:
    from distributed import Client

THREADS = 2  # parse-and-chunk tasks at once in the flow's process; each holds a parse worker of its own


def make_task_runner(kind: str | None = None, address: str | None = None, workers: int | None = None) -> TaskRunner:
    """The task runner for parse-and-chunk tasks: threads (default) or Dask (DOCINGEST_TASK_RUNNER=dask, an existing
    cluster at DOCINGEST_DASK_ADDRESS or a local cluster of DOCINGEST_DASK_WORKERS processes)."""
    settings = get_settings()
    kind = kind or settings.prefect.task_runner
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=THREADS)
    if kind != "dask":
        raise ConfigurationError(f"unknown task runner {kind!r}: use threads or dask")
    try:
        import dask
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigurationError("the dask task runner needs prefect-dask: pip install 'docingest[dask]'") from None
    address = address or settings.dask.address
    if address:
        return DaskTaskRunner(address=address, client_kwargs={"timeout": settings.dask.connect_timeout_s})
    # Parse workers are child processes of the Dask worker: Dask's workers must not be daemonic for that.
    dask.config.set({"distributed.worker.daemon": False})
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers or settings.dask.workers, "processes": True,
                                          "threads_per_worker": 1, "dashboard_address": None})


class SettingsTaskRunner(ThreadPoolTaskRunner):
    """A placeholder for the runner of ``make_task_runner()``: a thread pool until a run starts, which runs on
    ``duplicate()``, Prefect's call at the start of each run."""

    def __init__(self, max_workers: int | None = THREADS) -> None:
        super().__init__(max_workers=max_workers)

    def duplicate(self) -> TaskRunner:  # type: ignore[override]
        return make_task_runner()


def connect_cluster() -> Client | None:
    """The Dask client of the running flow's task runner, connected now (before the run writes anything), or None when
    the run's tasks run in threads. A scheduler that does not answer raises ClusterUnreachable (see
    :func:`ask_scheduler`)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    prefect_dask = sys.modules.get("prefect_dask")  # imported by whoever made a Dask runner
    runner = context.task_runner if context is not None else None
    if prefect_dask is None or not isinstance(runner, prefect_dask.DaskTaskRunner):
        return None
    address = runner.address
    if address:
        ask_scheduler(address, get_settings().dask.connect_timeout_s)
    try:
        return runner.client  # connects (or starts the local cluster)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnreachable(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def check_scheduler(kind: str | None = None, address: str | None = None) -> None:
    """Before a run: the Dask scheduler the run would use answers (a no-op for threads or a local cluster). The CLI
    calls it before anything starts."""
    settings = get_settings()
    address = address or settings.dask.address
    if (kind or settings.prefect.task_runner) == "dask" and address:
        ask_scheduler(address, settings.dask.connect_timeout_s)


def ask_scheduler(address: str, timeout_s: float) -> None:
    """Raise ClusterUnreachable, naming the address, unless a Dask scheduler answers at ``address`` within
    ``timeout_s``: at once when nothing listens at a TCP address (distributed itself would retry until its timeout),
    and within the timeout when something else listens there (a client's handshake with it would wait forever)."""
    import asyncio

    from distributed.comm import parse_address, parse_host_port
    from distributed.core import rpc

    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location) if scheme == "tcp" else (None, None)
    except (ValueError, TypeError) as exc:
        raise ClusterUnreachable(f"not a Dask scheduler address: {address!r} ({exc})") from None
    if host is not None and port is not None:
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except OSError as exc:
            raise ClusterUnreachable(f"cannot reach the Dask scheduler at {address}: {exc.strerror or exc}") from None

    async def identity() -> dict:
        async with rpc(address, timeout=timeout_s) as scheduler:
            return await scheduler.identity()

    try:
        answer = asyncio.run(asyncio.wait_for(identity(), timeout_s))
    except (OSError, TimeoutError, ValueError) as exc:  # refused, timed out, or not Dask's protocol
        why = str(exc) or f"no Dask scheduler answered in {timeout_s:g} s"
        raise ClusterUnreachable(f"cannot reach the Dask scheduler at {address}: {why}") from None
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        raise ClusterUnreachable(f"{address} is not a Dask scheduler (it answered as {answer.get('type')!r})")
