"""One run at a time per collection and scope: a file lock on this machine, and a Prefect global concurrency limit
with a lease when a Prefect server is configured."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager


def scope_name(collection: str, scope: str) -> str:
    return f"docingest-{collection}-{hashlib.sha256(scope.encode()).hexdigest()[:12]}"


@contextmanager
def server_limit(collection: str, scope: str, settings):
    """A limit-1 Prefect global concurrency limit for (collection, scope), when a Prefect server is configured.

    Not with a temporary API server (Prefect's ephemeral one, or the CLI's): it runs no repossessor, so a crashed run's
    slot would never be freed there.
    """
    from prefect.concurrency.sync import concurrency
    from prefect.context import FlowRunContext

    from docingest.ephemeral import temporary_api

    if temporary_api():
        yield
        return
    name = scope_name(collection, scope)
    FlowRunContext.get().client.upsert_global_concurrency_limit_by_name(name, limit=1)
    with concurrency(name, occupy=1, lease_duration=settings.lock_lease_s, timeout_seconds=settings.lock_timeout_s):
        yield


@contextmanager
def scope_lock(collection: str, scope: str, settings):
    """An exclusive file lock on ``<home>/locks/<collection>-<scope hash>.lock`` (filelock); waits for a run holding
    it, up to ``lock_timeout_s`` (forever when unset), then raises TimeoutError."""
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    folder = settings.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f"{scope_name(collection, scope)}.lock", thread_local=False)
    try:
        lock.acquire(timeout=-1 if settings.lock_timeout_s is None else settings.lock_timeout_s, poll_interval=0.2)
    except LockTimeout:
        raise TimeoutError(f"another run holds {collection!r} / {scope}") from None
    try:
        yield
    finally:
        lock.release()

