"""Retry policy shared by the tasks: transient errors are retried with backoff and jitter, the rest are not."""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from docingest.exceptions import EmbedError, StoreError

TRANSIENT = (StoreError, EmbedError, TimeoutError, ConnectionError)


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry only errors that may go away."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


RETRY_DELAYS = exponential_backoff(backoff_factor=1)
