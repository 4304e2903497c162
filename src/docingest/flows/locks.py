"""Concurrency between runs. Runs of one collection and scope exclude each other: a lock file on this machine, and a
Prefect global concurrency limit with a lease when a Prefect server is configured. Stage tasks keep their tags (and
Prefect's tag limits across runs) wherever such a limit can apply (``stage_limits_apply``).

A scope is a source, narrowed by the run's include/exclude filters when it has any (an upload's folder,
``--include "*.md"``): a narrowed run plans, writes and deletes only inside its filters. So runs narrowed by different
filters go at once (two uploads into one collection), while a run of the whole source waits for them, and they for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from docingest.settings import DocingestSettings


def scope_name(collection: str, scope: str) -> str:
    return f"docingest-{collection}-{hashlib.sha256(scope.encode()).hexdigest()[:12]}"


def narrowed(scope: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> str | None:
    """The scope of a run narrowed by filters (a key of its own), or None for a run of the whole source."""
    if not include and not exclude:
        return None
    return json.dumps([scope, sorted(include), sorted(exclude)])


def stage_limits_apply() -> bool:
    """Whether this run's stage tasks keep their tags, and with them Prefect's tag concurrency limits (``prefect
    concurrency-limit create docingest-parse 2``): always with a Prefect server, where an operator may cap a stage at
    any time; on a temporary API server only when its database holds a limit on one of the tags (read once, as the run
    starts).

    A tagged task run asks the API for its tags' slots as it starts, unless its process learnt in the last 5 s that
    they have no limit; Prefect 3.8 writes to the database for that even when none exists. On the temporary server's
    SQLite these writes collide with the run's other writes; each collision is a 503, and Prefect's client waits 2,
    4, 8, 16 s before asking again while the task holds its place in the pipeline: measured on 1,000 documents, 10
    such waits in one run, with both CPUs idle for up to 6 s at a time."""
    from prefect.context import FlowRunContext

    from docingest.ephemeral import temporary_api
    from docingest.tasks.common import STAGE_TAGS

    if not temporary_api():
        return True
    try:
        limits = _client(FlowRunContext.get()).read_global_concurrency_limits(limit=200, offset=0)
    except Exception:  # noqa: BLE001 - when in doubt, limits apply
        return True
    names = {f"tag:{tag}" for tag in STAGE_TAGS}
    return any(limit.name in names for limit in limits)


@contextmanager
def server_limit(collection: str, scope: str, settings: DocingestSettings,
                 filters: tuple[Sequence[str], Sequence[str]] = ((), ())) -> Iterator[None]:
    """A limit-1 Prefect global concurrency limit for (collection, scope and filters), when a Prefect server is
    configured: runs on other machines wait for each other.

    Not with a temporary API server (Prefect's ephemeral one, or the CLI's): it runs no repossessor, so a crashed run's
    slot would never be freed there.
    """
    from prefect.concurrency.sync import concurrency
    from prefect.context import FlowRunContext

    from docingest.ephemeral import temporary_api

    if temporary_api():
        yield
        return
    name = scope_name(collection, narrowed(scope, *filters) or scope)
    _client(FlowRunContext.get()).upsert_global_concurrency_limit_by_name(name, limit=1)
    with concurrency(name, occupy=1, lease_duration=settings.prefect.lock_lease_s, timeout_seconds=settings.prefect.lock_timeout_s):
        yield


@contextmanager
def scope_lock(collection: str, scope: str, settings: DocingestSettings,
               filters: tuple[Sequence[str], Sequence[str]] = ((), ())) -> Iterator[None]:
    """Locks under ``<home>/locks/`` (filelock; the kernel frees them if the process dies). A run of the whole source
    holds ``<collection>-<scope hash>.db`` exclusively; a narrowed run holds it shared, and its narrowed scope's
    ``.lock`` exclusively. Waits for the runs it excludes up to ``lock_timeout_s`` (forever when unset), then raises
    TimeoutError."""
    from filelock import FileLock, ReadWriteLock
    from filelock import Timeout as LockTimeout

    folder = settings.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    timeout = -1 if settings.prefect.lock_timeout_s is None else settings.prefect.lock_timeout_s
    part = narrowed(scope, *filters)
    with ExitStack() as held:
        # One instance per run: filelock's read-write lock coordinates processes, and threads only through instances
        # of their own (two runs of one service are two threads).
        whole = ReadWriteLock(folder / f"{scope_name(collection, scope)}.db", is_singleton=False)
        held.callback(whole.close)
        try:
            if part is None:
                held.enter_context(whole.write_lock(timeout))
            else:
                held.enter_context(whole.read_lock(timeout))
                lock = FileLock(folder / f"{scope_name(collection, part)}.lock", thread_local=False)
                lock.acquire(timeout=timeout, poll_interval=0.2)
                held.callback(lock.release)
        except LockTimeout:
            raise TimeoutError(f"another run holds {collection!r} / {scope}") from None
        yield


def _client(context: Any) -> Any:
    """The flow run's API client (a sync flow's: Prefect types it as either kind, and the context as optional)."""
    if context is None:
        raise RuntimeError("not inside a flow run")
    return context.client
