"""The flow's task runner: threads (default) or Dask, chosen from the settings when a run starts.

Prefect fixes a flow's task runner when ``@flow`` decorates it, at import, and duplicates it as each run starts. The
flow is given a ``SettingsTaskRunner``, which duplicates into the runner the settings name at that moment: importing the
flow never needs prefect-dask (nor raises without it), and a process that changes DOCINGEST_TASK_RUNNER between runs
gets what it asked for.
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from docingest.exceptions import ConfigurationError
from docingest.settings import get_settings

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
        return DaskTaskRunner(address=address)
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
