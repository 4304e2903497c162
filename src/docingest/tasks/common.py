"""Retry policy shared by the tasks: transient errors are retried with backoff and jitter, the rest are not."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from prefect.tasks import exponential_backoff

from docingest.exceptions import EmbedError, StoreError

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

P = ParamSpec("P")
R = TypeVar("R")

TRANSIENT = (StoreError, EmbedError, TimeoutError, ConnectionError)


def retry_transient(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """Prefect retry_condition_fn: retry only errors that may go away."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


RETRY_DELAYS = exponential_backoff(backoff_factor=1)

# Tags on every stage task, so an operator can cap a stage across every run on a server with Prefect's own limits,
# e.g. `prefect concurrency-limit create docingest-parse 2` (one GPU, a rate-limited embedding service).
TAG = "docingest"
PARSE_TAGS = [TAG, "docingest-parse"]
EMBED_TAGS = [TAG, "docingest-embed"]
STORE_TAGS = [TAG, "docingest-store"]
STAGE_TAGS = tuple(dict.fromkeys(PARSE_TAGS + EMBED_TAGS + STORE_TAGS))


def run_name(template: Callable[[dict], str], fallback: str = "task") -> Callable[..., str]:
    """A task_run_name made from the run's resolved parameters (futures resolved, annotations such as ``quote``
    removed; Prefect passes them to a callable that takes ``parameters``), e.g. ``upsert 1,024 points`` (readable in
    the Prefect UI)."""

    def name(parameters: dict) -> str:
        try:
            return template(parameters)
        except Exception:  # noqa: BLE001 - a name must never fail a task
            return fallback

    return name


def count(n: int, noun: str) -> str:
    """``1 point``, ``1,024 points``: a count with its noun, for run names."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"


def stage_task(name: str, describe: Callable[[dict], str], tags: list[str],
               retries: int) -> Callable[[Callable[P, R]], Task[P, R]]:
    """The task decorator every stage but parsing shares: a readable run name, the stage's tags, retries of transient
    errors with backoff and jitter, no caching, nothing persisted."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(name=name, task_run_name=run_name(describe, name), tags=tags, retries=retries,
                retry_delay_seconds=RETRY_DELAYS, retry_jitter_factor=0.5, retry_condition_fn=retry_transient,
                cache_policy=NO_CACHE, persist_result=False)  # never inherit the flow's persisted result
