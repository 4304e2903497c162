"""Parse-and-chunk in a bounded window: new and changed documents go to parse task runs (several documents per run
on large syncs), at most ``options.window`` documents in flight; each run's documents go to the writer as soon as the
run finishes, whichever finishes first (a document that parses for minutes holds no other document's outcome), and
the circuit breaker is checked as they arrive."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from prefect import get_run_logger
from prefect.futures import PrefectFuture

from docingest.core import faults
from docingest.core.plan import PlannedDocument
from docingest.datamodel import Stage
from docingest.flows.run import Run
from docingest.flows.writer import Writer, finished
from docingest.options import IngestOptions
from docingest.tasks.prepare import PrepareFailed

if TYPE_CHECKING:
    from docingest.flows.context import RunContext

BATCH_FROM = 64  # documents to parse from which parse-and-chunk task runs take several documents each
DOCS_PER_TASK = 8  # per-document task runs cost ~18 s of a 115 s run on 1k generated documents (2 CPUs)
IDLE_S = 0.2  # no parsed document for this long: an idle encoder takes what is pending


def docs_per_task(options: IngestOptions, documents: int) -> int:
    """Documents per parse task run: one on small syncs; on large ones up to 8, never over a quarter of the window
    (so several runs are always in flight and parsing stays concurrent)."""
    if options.docs_per_task:
        return options.docs_per_task
    return 1 if documents < BATCH_FROM else min(DOCS_PER_TASK, max(1, options.window // 4))


def prepare_in_window(ctx: RunContext, work: list[PlannedDocument], writer: Writer, run: Run) -> None:
    """Submit the parse-and-chunk task runs of ``work`` (the run's per-document or batch task) and hand what they
    prepare to ``writer``, until all are taken or the circuit breaker trips."""
    src, profile, options, model, metrics = ctx.source, ctx.profile, ctx.options, ctx.model, ctx.metrics
    prepare, prepare_batch = ctx.stages.prepare, ctx.stages.prepare_batch
    per_task = docs_per_task(options, len(work))
    window: deque[tuple[PrefectFuture, int]] = deque()  # (future, its documents)
    in_flight = 0
    for start in range(0, len(work), per_task):
        if run.result.aborted:
            break
        group = work[start:start + per_task]
        items = [(p.doc, p.change, attempt(p)) for p in group]
        # Not quote()d: Prefect's Dask runner would hand the wrapper itself to the task (the arguments are small or
        # opaque objects Prefect does not walk into, so quoting saves nothing here).
        if per_task == 1:
            future = prepare.submit(src, *items[0][:2], profile, options, model, items[0][2])
        else:
            label = f"{group[0].doc.path} (+{len(group) - 1})" if len(group) > 1 else group[0].doc.path
            future = prepare_batch.submit(src, items, profile, options, model, label)
        window.append((future, len(group)))
        in_flight += len(group)
        metrics.set_in_flight(in_flight)
        while in_flight >= options.window and window:
            in_flight -= take_first(window, writer, run, options)
            metrics.set_in_flight(in_flight)
    while window:  # the rest, also after the breaker tripped (those documents are parsed already or being parsed)
        in_flight -= take_first(window, writer, run, options)
        metrics.set_in_flight(in_flight)


def attempt(p: PlannedDocument) -> int:
    """How many times earlier runs failed to read, parse or chunk this document."""
    return p.known.attempts if p.known and p.known.stage in (Stage.READ, Stage.PARSE, Stage.CHUNK) else 0


def take_first(window: deque[tuple[PrefectFuture, int]], writer: Writer, run: Run, options: IngestOptions) -> int:
    """Hand the documents of the first parse task run in ``window`` to finish (not necessarily the oldest) to the
    writer; returns how many documents it had. While none is finished, an idle encoder takes what is pending."""
    while True:
        for index, (future, n) in enumerate(window):
            if finished(future):
                del window[index]
                take(future, writer, run, options)
                return n
        window[0][0].wait(IDLE_S)
        if not any(finished(future) for future, _ in window):
            writer.maybe_flush(idle=True)


def take(future: PrefectFuture, writer: Writer, run: Run, options: IngestOptions) -> None:
    """Hand a finished parse task run's documents to the writer."""
    try:
        result = future.result()
    except PrepareFailed as failed:  # a document's own failure (the task run shows Failed in the UI)
        result = failed.prepared
    cached = future.state.name == "Cached"  # parsed by an earlier run: this run did none of that work
    for prepared in result if isinstance(result, list) else [result]:
        if cached:
            prepared.timings = {}  # stage seconds count work done in this run
        run.took(prepared)
        writer.add(prepared)
        faults.checkpoint("after-prepare")
        if reason := run.trip(options):
            get_run_logger().error(reason)
