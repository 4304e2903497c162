"""The ingest flow: discover -> plan -> parse+chunk (per document) -> embed (batched across documents) -> upsert."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from docingest import store_reads  # noqa: F401 - stores this process holds answer other processes' reads
from docingest.core.embed import LoadedModel
from docingest.core.metrics import Pusher, RunMetrics
from docingest.core.parse import accurate_models_status
from docingest.core.plan import Action, Plan, make_plan
from docingest.core.sparse import SPARSE_VECTOR
from docingest.core.store import QdrantStore
from docingest.core.worker import pools_in_use
from docingest.datamodel import DocumentStatus, IngestResult, ManifestRecord, Stage
from docingest.exceptions import CircuitBreakerOpen, CrashRetriesExhausted
from docingest.flows.artifacts import ProgressArtifact, publish_artifacts
from docingest.flows.context import RunContext
from docingest.flows.locks import scope_lock, server_limit, stage_limits_apply
from docingest.flows.planning import prefetch_model, record_planned
from docingest.flows.run import Run
from docingest.flows.runners import SettingsTaskRunner, connect_cluster
from docingest.flows.runspec import RunInputs, RunSpec, resolve_spec
from docingest.flows.window import prepare_in_window
from docingest.flows.writer import Writer
from docingest.options import IngestOptions, PdfMode, Preset
from docingest.settings import get_settings
from docingest.targets import QdrantTarget, resolve_result_storage
from docingest.tasks.stages import stages_for_run

if TYPE_CHECKING:
    from distributed import Client


@flow(
    name="ingest-documents",
    task_runner=cast(Any, SettingsTaskRunner()),  # the runner DOCINGEST_TASK_RUNNER names, chosen as each run starts
    validate_parameters=True,
    log_prints=True,
    persist_result=True,  # the IngestResult, read back by whoever started the run (the upload service's jobs)
)
def ingest_documents(
    source: str | None = None,
    collection: str | None = None,
    options: IngestOptions | None = None,
    qdrant: QdrantTarget | None = None,
    qdrant_block: str | None = None,
    source_block: str | None = None,
    embedder_block: str | None = None,
    collection_block: str | None = None,
    result_storage: str | None = None,
    preset: Preset | None = None,
) -> IngestResult:
    """Sync a folder of documents into a Qdrant collection.

    Every run first plans each document against the collection's manifest (content hash + settings fingerprint):
    unchanged documents are not parsed; new and changed ones are parsed with Docling in isolated worker processes,
    chunked with HybridChunker, embedded in batches across documents and upserted; a changed document's new version
    is written before its old one is removed. A failing document is reported and never stops the run (until the
    circuit breaker trips). With ``options.mode = "full"``, documents that vanished from the source are removed,
    only within this source's scope and never past ``max_delete_ratio`` unless forced.

    Args:
        source: Folder or file, file:// URI, s3://bucket/prefix, or a git URL (see options.source.git_ref/_path).
        collection: Qdrant collection to keep in sync.
        options: Parse, chunk, embed, store and sync options.
        qdrant: Where Qdrant lives for this run; default from settings (DOCINGEST_QDRANT_URL / _PATH).
        qdrant_block: Name of a saved QdrantConnection block to use instead of settings.
        source_block: Name of a saved S3BucketSource or GitRepositorySource block, instead of ``source``.
        embedder_block: Name of a saved EmbedderSettings block (model, device, batch size).
        collection_block: Name of a saved QdrantCollection block (connection + collection), instead of
            ``collection`` and ``qdrant_block``.
        result_storage: Saved block for the parse cache (``docingest-s3-result-storage/NAME`` or any Prefect
            WritableFileSystem block), shared by workers on other machines; default DOCINGEST_RESULT_STORAGE, else
            Prefect's local result storage.
        preset: default, high-throughput or memory-efficient: workers, window, batch sizes and embedding backend
            set together (same as ``options.preset``); options set explicitly win.
    """
    started = time.monotonic()
    settings = get_settings()
    _check_crash_retries(settings.prefect.crash_retries)

    # 1. The run, resolved once: where it writes, what it reads, the model, the profile (settings fingerprint); its
    #    stage tasks, its collection (made if new) and its metrics: the context every later step takes.
    spec = resolve_spec(RunInputs(source=source, collection=collection, options=options, qdrant=qdrant,
                                  qdrant_block=qdrant_block, source_block=source_block, embedder_block=embedder_block,
                                  collection_block=collection_block, preset=preset))
    # With a Dask task runner the cluster parses, chunks and embeds: connected now, before anything is written.
    ctx = _begin(spec, result_storage, connect_cluster())

    pusher = Pusher(ctx.metrics, settings.pushgateway_url)  # no-op without DOCINGEST_PUSHGATEWAY_URL
    result = None
    try:
        # The parse workers are shared by the runs of this process, and stopped when the last of them ends.
        with _exclusive(ctx), pools_in_use():
            ctx, sparse_added = _sparse_vectors(ctx)
            result = _sync(ctx)
            result.chunks.sparse_added = sparse_added
        result.duration_s = time.monotonic() - started
    finally:
        if result is not None:
            result.stage_seconds = dict(ctx.metrics.stage_totals)
            ctx.metrics.finish(result, succeeded=result.ok and not result.aborted)
        else:  # the run itself broke (e.g. Qdrant went away): recorded as a failed run
            ctx.metrics.status.labels(ctx.collection, ctx.source.uri).set(0)
        pusher.close()
    _report(ctx, result)
    if result.aborted:
        raise CircuitBreakerOpen(result.aborted, result)
    return result


def _check_crash_retries(allowed: int) -> None:
    """A run scheduled again after a crash (the automation of deployments/setup_pools.py) says so; past ``allowed``
    such retries it fails instead, so a run that crashes its machine is not started forever."""
    from prefect.runtime import flow_run

    attempt = flow_run.run_count or 1
    if attempt > allowed + 1:
        raise CrashRetriesExhausted(f"this run crashed {attempt - 1} times; not started again "
                                    f"(DOCINGEST_CRASH_RETRIES={allowed})")
    if attempt > 1:
        get_run_logger().warning("attempt %d of this run: the last one crashed; resuming (documents written by it "
                                 "are unchanged now and not parsed again)", attempt)


def _begin(spec: RunSpec, result_storage: str | None, cluster: Client | None) -> RunContext:
    """The run's context: its stage tasks, its collection (made if new; the alias is resolved once, so a run that
    started before a model migration's switch finishes where it began), its metrics and its Dask cluster, if any."""
    logger = get_run_logger()
    stages = stages_for_run(resolve_result_storage(result_storage), tagged=stage_limits_apply())
    profile = spec.profile
    physical = stages.ensure(spec.location, spec.collection, spec.model.info.dimension,
                             (SPARSE_VECTOR,) if profile.sparse_language else ())
    logger.info("ingesting %s into %r (%s) on %s (model %s, %d-token chunks, mode %s)", spec.source.uri,
                spec.collection, physical, spec.location.describe(), spec.model.info.name, profile.max_tokens,
                spec.options.mode.value)
    if spec.options.parse.pdf_mode is PdfMode.AUTO:
        logger.info("pdf-mode auto: PDFs use %s conversion (%s)", profile.pdf_mode.value, accurate_models_status()[1])
    return RunContext(spec=spec, stages=stages, metrics=RunMetrics(spec.collection, spec.source.uri),
                      physical=physical, cluster=cluster)


@contextlib.contextmanager
def _exclusive(ctx: RunContext) -> Iterator[None]:
    """One run at a time per collection and scope (the source, narrowed by the run's filters): an OS file lock on this
    machine (freed by the kernel if the process dies), and with a Prefect server also a global concurrency limit with
    a lease (freed by the server's repossessor when a crashed run's lease expires), which serializes runs on different
    machines. Runs narrowed by different filters (two uploads) go at once; a whole-source run waits."""
    settings, uri = get_settings(), ctx.source.uri
    filters = (ctx.options.source.include, ctx.options.source.exclude)
    with scope_lock(ctx.collection, uri, settings, filters), server_limit(ctx.collection, uri, settings, filters):
        yield


def _report(ctx: RunContext, result: IngestResult) -> None:
    """The run's artifacts (summary and per-document table) and its closing log lines."""
    logger = get_run_logger()
    publish_artifacts(ctx.collection, result)
    d = result.documents
    logger.info("done in %.1fs: %d seen, %d new, %d changed, %d unchanged, %d deleted, %d skipped, %d failed; "
                "%d chunks upserted, %d deleted", result.duration_s, d.seen, d.new, d.changed, d.unchanged, d.deleted,
                d.skipped, d.failed, result.chunks.upserted, result.chunks.deleted)
    if late := sum(o.status is DocumentStatus.SKIPPED and o.stage is not Stage.DISCOVER for o in result.outcomes):
        logger.info("%d of the documents the plan counted as new or changed %s skipped after reading (empty, or "
                    "content this installation cannot read): the plan cannot know that before parsing", late,
                    "was" if late == 1 else "were")


def _sparse_vectors(ctx: RunContext) -> tuple[RunContext, int]:
    """A collection made before hybrid search (or with another BM25 language) gains its sparse vectors here, from the
    stored text: the dense model never runs for that. Where the Qdrant cannot add them, the run stays dense-only."""
    language = ctx.profile.sparse_language
    if not language:
        return ctx, 0
    added = ctx.stages.sparse(ctx.location, ctx.physical, language)
    if added is None:
        get_run_logger().warning("%s cannot hold BM25 vectors on %s (this Qdrant cannot add a vector to an existing "
                                 "collection): it stays dense-only; `docingest migrate` rebuilds it with them",
                                 ctx.physical, ctx.location.describe())
        return ctx.with_profile(dataclasses.replace(ctx.profile, sparse_language=None)), 0
    if added:
        get_run_logger().info("BM25 vectors (%s) added to %d stored chunks of %s, without re-embedding", language,
                              added, ctx.physical)
    return ctx, added


def _sync(ctx: RunContext) -> IngestResult:
    """The run's steps, in order: plan, prepare and write, delete what vanished, upkeep."""
    plan, known, run = _plan(ctx)
    # The writer embeds and stores in pools as Prefect task runs; leaving this block early cancels what has not
    # started and waits for what runs.
    with Writer(ctx, run, known) as writer:
        record_planned(plan, run, writer.add)  # unchanged, skipped, dead-lettered: known without parsing
        _prepare(ctx, plan, writer, run)
        writer.finish()  # the last pool is written, or the first error of the writer's task runs is raised here
    _delete_vanished(ctx, plan, run)
    _upkeep(ctx, run)
    return run.result


def _plan(ctx: RunContext) -> tuple[Plan, dict[str, ManifestRecord], Run]:
    """2. Plan every document before any work: hash each file, compare with the manifest; full mode lists deletions
    (and refuses past the delete guard before anything is written). Returns the plan, the manifest it was made
    against and the run's accumulator."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    known = QdrantStore(ctx.location).manifest(ctx.physical, ctx.source.uri)
    plan = make_plan(ctx.source.uri, list(ctx.source.iter_documents()), known, ctx.profile, ctx.options)
    logger.info("plan: %s", ", ".join(f"{v} {k}" for k, v in plan.counts().items()))
    run = Run(ctx.collection, ctx.source.uri, len(plan.documents), logger)
    run.artifact = ProgressArtifact(ctx.collection, len(plan.documents), str(flow_run.get_id() or ""))
    run.result.mode = ctx.options.mode.value
    run.result.flow_run_id = str(flow_run.get_id() or "")
    if ctx.options.source.follow_symlinks:
        logger.warning("following symbolic links out of the source root (option source.follow_symlinks): files "
                       "they lead to are ingested as part of %s", ctx.source.uri)
    return plan, known, run


def _prepare(ctx: RunContext, plan: Plan, writer: Writer, run: Run) -> None:
    """3. Parse+chunk new and changed documents in a bounded window; they are embedded and stored in pools as they
    finish (the writer's task runs), while the next ones are parsed. On a Dask cluster the workers parse, chunk and
    embed pools of documents, and the writer stores what they send back."""
    work = plan.by_action(Action.PROCESS)
    if ctx.cluster is not None:  # the cluster's workers parse, chunk and embed; the writer here only writes
        from docingest.flows.cluster import prepare_on_cluster

        prepare_on_cluster(ctx, work, writer, run)
        return
    if work and isinstance(ctx.model, LoadedModel) and not ctx.model.loaded:
        prefetch_model(ctx.model)  # the weights load while the first documents are parsed
    prepare_in_window(ctx, work, writer, run)


def _delete_vanished(ctx: RunContext, plan: Plan, run: Run) -> None:
    """4. Full sync: remove what vanished from this source's scope, only after a run that was not aborted."""
    if not plan.deleted or run.result.aborted:
        return
    started = time.perf_counter()
    run.result.chunks.deleted += ctx.stages.delete(ctx.location, ctx.physical, quote(plan.deleted))
    ctx.metrics.observe_stage("delete", time.perf_counter() - started)
    run.result.documents.deleted = len(plan.deleted)
    run.result.deleted = [r.uri for r in plan.deleted]


def _upkeep(ctx: RunContext, run: Run) -> None:
    """5. Upkeep: flush, and index the collection once it has grown enough to need it (reported, never per batch)."""
    if not (run.result.chunks.upserted or run.result.chunks.deleted):
        return
    upkeep = ctx.stages.maintain(ctx.location, ctx.physical)
    if upkeep.indexed:
        ctx.metrics.observe_stage("index", upkeep.seconds)
        get_run_logger().info("built the vector index of %s (%d points) in %.1fs", ctx.physical, upkeep.points,
                              upkeep.seconds)
