"""Parse, chunk and embed on a Dask cluster: the workers do the expensive stages, the flow plans and writes.

New and changed documents go to the cluster in pools: ``parse-chunk-embed`` task runs of up to ``DOCS_PER_POOL``
documents (``options.docs_per_task`` sets it), at most ``IN_FLIGHT_PER_THREAD`` per worker thread in flight. A worker
parses a pool's documents one at a time in its parse workers (the same time and memory limits) and encodes all their
chunks in one call, with the model its plugin loaded once (``core.dask_worker``). A pool comes back as chunks and
float32 vectors and goes straight to the writer (upsert, old versions, manifest: in this process), whichever pool
finishes first. While it waits, the flow watches the cluster: with no worker for DOCINGEST_DASK_WORKER_WAIT_S the run
fails (ClusterError), and what it wrote before is complete (a pool's points and manifest records go together).
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING

import distributed
from distributed.scheduler import KilledWorker
from prefect import get_run_logger
from prefect.futures import PrefectFuture

from docingest.core import faults
from docingest.core.dask_worker import model_plugin
from docingest.core.plan import PlannedDocument
from docingest.core.write import PreparedPool
from docingest.datamodel import DocumentStatus, PreparedDocument, Stage
from docingest.exceptions import ClusterError
from docingest.flows.run import Run
from docingest.flows.writer import Writer, finished
from docingest.options import IngestOptions
from docingest.settings import get_settings

if TYPE_CHECKING:
    from docingest.flows.context import RunContext

DOCS_PER_POOL = 128  # the most documents per pool task: ~270 chunks of generated handbook pages per encode call
POOLS_PER_THREAD = 4  # smaller pools on smaller runs, so every worker thread gets several (the last pool is the tail)
IN_FLIGHT_PER_THREAD = 2  # one pool running and one waiting per worker thread; Dask gives the next to whoever is free
WAIT_S = 0.5  # the flow's wait for a pool to finish before it records written pools and looks at the cluster
WATCH_S = 1.0  # the fewest seconds between two questions to the scheduler about its workers


def docs_per_pool(options: IngestOptions, documents: int, threads: int) -> int:
    """Documents per pool task: ``options.docs_per_task`` when set; else enough for ``POOLS_PER_THREAD`` pools per
    worker thread, at most ``DOCS_PER_POOL`` (larger pools pad less in the encoder, smaller ones balance better)."""
    if options.docs_per_task:
        return options.docs_per_task
    return max(1, min(DOCS_PER_POOL, math.ceil(documents / (max(1, threads) * POOLS_PER_THREAD))))


class ClusterWatch:
    """Fails the run when the cluster has had no worker for ``wait_s`` (every worker gone, or none joined)."""

    def __init__(self, client: distributed.Client, wait_s: float) -> None:
        self.client, self.wait_s = client, wait_s
        self.checked = 0.0
        self.empty_since: float | None = None

    def threads(self) -> int:
        """Worker threads in the cluster now (0 when the scheduler cannot be asked)."""
        try:
            return sum(self.client.nthreads().values())
        except (OSError, TimeoutError):
            return 0

    def check(self) -> None:
        now = time.monotonic()
        if now - self.checked < WATCH_S:
            return
        self.checked = now
        if self.threads():
            self.empty_since = None
            return
        if self.empty_since is None:
            self.empty_since = now
            get_run_logger().warning("the Dask cluster has no worker: waiting up to %g s for one "
                                     "(DOCINGEST_DASK_WORKER_WAIT_S)", self.wait_s)
        elif now - self.empty_since >= self.wait_s:
            raise ClusterError(f"the Dask cluster at {self.client.scheduler.address} had no worker for "
                               f"{self.wait_s:g} s (every worker left, or none joined): run stopped; the documents "
                               "written before are complete, the next run does the rest")

    def lost(self) -> ClusterError:
        """The error of a run whose pools Dask cancelled: the client lost the scheduler (it tries to reconnect for
        distributed.comm.timeouts.connect first)."""
        return ClusterError(f"lost the Dask scheduler at {self.client.scheduler.address}: run stopped; the "
                            "documents written before are complete, the next run does the rest")


def prepare_on_cluster(ctx: RunContext, work: list[PlannedDocument], writer: Writer, run: Run) -> None:
    """Submit ``work`` to the cluster in pools and hand each finished pool to ``writer``, until all are taken or the
    circuit breaker trips."""
    assert ctx.cluster is not None
    logger = get_run_logger()
    if not work:
        return
    # Every worker loads the model once for its life (a worker that joins later too); a no-op from the second run on.
    ctx.cluster.register_plugin(model_plugin(ctx.model, ctx.options))
    watch = ClusterWatch(ctx.cluster, get_settings().dask.worker_wait_s)
    threads = watch.threads()
    per_pool = docs_per_pool(ctx.options, len(work), threads)
    limit = max(2, IN_FLIGHT_PER_THREAD * threads)
    logger.info("parsing, chunking and embedding %d documents on the Dask cluster at %s (%d worker threads), in pools "
                "of up to %d documents", len(work), ctx.cluster.scheduler.address, threads, per_pool)
    window: deque[tuple[PrefectFuture, list[PlannedDocument]]] = deque()
    for start in range(0, len(work), per_pool):
        if run.result.aborted:
            break
        group = work[start:start + per_pool]
        label = f"{group[0].doc.path} (+{len(group) - 1})" if len(group) > 1 else group[0].doc.path
        window.append((ctx.stages.prepare_embed.submit(ctx.source, [(p.doc, p.change) for p in group], ctx.profile,
                                                       ctx.options, ctx.model, label), group))
        while len(window) >= limit:
            take_first(window, writer, run, ctx.options, watch)
    while window:  # the rest, also after the breaker tripped (those pools are being parsed already)
        take_first(window, writer, run, ctx.options, watch)


def take_first(window: deque[tuple[PrefectFuture, list[PlannedDocument]]], writer: Writer, run: Run,
               options: IngestOptions, watch: ClusterWatch) -> None:
    """Hand the first pool in ``window`` to finish to the writer; meanwhile, record written pools and watch the
    cluster."""
    while True:
        for index, (future, group) in enumerate(window):
            if finished(future):
                del window[index]
                try:
                    take(future, group, writer, run, options)
                except CancelledError:
                    raise watch.lost() from None
                return
        try:
            with watch.client.as_current():  # distributed.wait asks for the current client
                distributed.wait([future.wrapped_future for future, _ in window],  # type: ignore[attr-defined]
                                 timeout=WAIT_S, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        except CancelledError:  # distributed's FuturesCancelledError: the scheduler is gone
            raise watch.lost() from None
        writer.collect()
        watch.check()


def take(future: PrefectFuture, group: list[PlannedDocument], writer: Writer, run: Run, options: IngestOptions) -> None:
    """Hand a finished pool's documents to the writer: the embedded ones to be written, the others to be recorded."""
    try:
        pool: PreparedPool = future.result()
    except KilledWorker:  # the pool killed every worker that ran it: its documents fail, the run goes on
        error = ("every Dask worker that ran this document's pool died while running it (KilledWorker, after "
                 "distributed.scheduler.allowed-failures retries); retried by the next run")
        pool = PreparedPool(others=[PreparedDocument(document=p.doc, change=p.change, status=DocumentStatus.FAILURE,
                                                     stage=Stage.PARSE, error=error) for p in group])
    for prepared in pool.others:
        run.took(prepared)
        writer.add(prepared)
    run.taken += len(pool.embedded.docs) + len(pool.embedded.failed)  # embed failures count as they are recorded
    writer.add_embedded(pool.embedded)
    faults.checkpoint("after-prepare")
    if reason := run.trip(options):
        get_run_logger().error(reason)
