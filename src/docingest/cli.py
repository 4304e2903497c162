"""docingest command line: ingest, search, export, doctor, eval, migrate, convert-store, serve and plugins.

Exit codes: 0 all documents fine; 1 the run finished but some documents failed; 2 usage or configuration error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from docingest.options import (  # light: pydantic only
    ChunkOptions,
    EmbedBackend,
    EmbedOptions,
    IngestOptions,
    Isolation,
    OcrMode,
    ParseOptions,
    PdfMode,
    Preset,
    SourceOptions,
    StoreOptions,
    SyncMode,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from docingest.core.plan import Plan
    from docingest.datamodel import IngestResult
    from docingest.settings import DocingestSettings
    from docingest.targets import QdrantTarget

app = typer.Typer(
    name="docingest",
    help="Keep a Qdrant collection in sync with a document store (Prefect + Docling + sentence-transformers).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

EXIT_OK, EXIT_FAILED_DOCS, EXIT_CONFIG = 0, 1, 2


def _quiet_environment(verbose: bool) -> None:
    """Defaults for a CLI process: offline-friendly, no telemetry, Prefect logs only when asked for."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not verbose:
        import warnings

        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        # The run's own logs go to the Prefect API at INFO (its Logs tab in the UI, one WARNING per skipped or failed
        # document), not to the terminal: per-document problems are in the summary, and a flow's own error is printed
        # by us as one line. The loggers stay at INFO; _run_logs_to_api_only() keeps them off the console.
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO")
        logging.getLogger("docling").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"docling(_core)?\..*")


RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def _run_logs_to_api_only(verbose: bool) -> None:
    """Flow-run and task-run records reach Prefect's API handler (their own) but not the console on the root logger.
    Called once Prefect has configured logging (importing it does): a later, incremental set-up keeps this."""
    if verbose:
        return
    import prefect  # noqa: F401 - its import configures logging (non-incrementally, which would undo this)

    for name in RUN_LOGGERS:
        logging.getLogger(name).propagate = False


def _fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    from rich.text import Text

    err.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _field(model: type[BaseModel], name: str, *flags: str, more: str = "") -> Any:  # typer.Option's own type
    """A CLI option whose help and shown default are the options model's (one source of truth): the parameter's
    own default is None (or False for a flag), and only options given explicitly reach the model."""
    info = model.model_fields[name]
    default = info.get_default(call_default_factory=True)
    text = " ".join(part for part in (info.description or "", more) if part)
    if default not in (None, [], False):
        text += f" \\[default: {', '.join(default) if isinstance(default, list) else getattr(default, 'value', default)}]"
    return typer.Option(*flags, help=text, show_default=False)


def _settings() -> DocingestSettings:
    """The process's settings; an invalid one ends the command with exit 2 and one line naming its variable."""
    from pydantic import ValidationError

    from docingest.settings import describe_error, get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        raise _fail(f"invalid setting {describe_error(exc)}") from None


def _qdrant_target(qdrant_path: Path | None, qdrant_url: str | None) -> QdrantTarget | None:
    """The command's QdrantTarget (None: the settings'); the target refuses both, in the flags' words here. Every
    command that opens a store comes here first, so an invalid setting is reported here too."""
    from pydantic import ValidationError

    from docingest.targets import QdrantTarget

    _settings()
    try:
        return QdrantTarget.given(qdrant_path, qdrant_url)
    except ValidationError:
        raise _fail("give either --qdrant-path or --qdrant-url, not both") from None


QdrantPathOpt = Annotated[
    Path | None,
    typer.Option("--qdrant-path", help="Folder of the embedded store \\[env: DOCINGEST_QDRANT_PATH]."),
]
QdrantUrlOpt = Annotated[
    str | None, typer.Option("--qdrant-url", help="Qdrant server URL \\[env: DOCINGEST_QDRANT_URL].")
]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Qdrant collection name.")]
OptCollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="Qdrant collection name (or --collection-block).")
]
CollectionBlockOpt = Annotated[
    str | None, typer.Option("--collection-block", help="Saved QdrantCollection block: connection + collection.")
]
QdrantBlockOpt = Annotated[str | None, typer.Option("--qdrant-block", help="Saved QdrantConnection block.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="dense, bm25 (exact terms) or hybrid (both fused). Default: hybrid where the "
                 "collection has BM25 vectors, else dense."),
]
FusionOpt = Annotated[str, typer.Option("--fusion", help="How hybrid fuses the two rankings: rrf or dbsf.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect and Docling logs on stderr.")]

# What a run reads and how: the options `ingest` and `watch` share (their help is the options models' own).
SourceBlockOpt = Annotated[
    str | None, typer.Option("--source-block", help="Saved S3BucketSource / GitRepositorySource block, instead of SOURCE.")
]
EmbedderBlockOpt = Annotated[
    str | None, typer.Option("--embedder-block", help="Saved EmbedderSettings block (model, device, batch).")
]
ResultStorageOpt = Annotated[
    str | None, typer.Option("--result-storage", help="Saved block for the shared parse cache, e.g. "
                             "docingest-s3-result-storage/NAME \\[env: DOCINGEST_RESULT_STORAGE].")
]
PdfModeOpt = Annotated[PdfMode | None, _field(ParseOptions, "pdf_mode", "--pdf-mode")]
OcrOpt = Annotated[OcrMode | None, _field(ParseOptions, "ocr", "--ocr")]
OcrLangOpt = Annotated[str | None, _field(ParseOptions, "ocr_lang", "--ocr-lang",
                                          more="`docingest doctor` lists the installed ones.")]
ModelOpt = Annotated[str | None, _field(EmbedOptions, "model", "--model")]
Bm25LanguageOpt = Annotated[str | None, _field(StoreOptions, "bm25_language", "--bm25-language")]
IncludeOpt = Annotated[list[str] | None, _field(SourceOptions, "include", "--include", more="Repeatable.")]
ExcludeOpt = Annotated[list[str] | None, _field(SourceOptions, "exclude", "--exclude", more="Repeatable.")]
GitRefOpt = Annotated[str | None, _field(SourceOptions, "git_ref", "--git-ref")]
GitPathOpt = Annotated[str | None, _field(SourceOptions, "git_path", "--git-path")]
FollowSymlinksOpt = Annotated[
    bool, _field(SourceOptions, "follow_symlinks", "--follow-symlinks", more="\\[env: DOCINGEST_FOLLOW_SYMLINKS]")
]
MaxTokensOpt = Annotated[int | None, _field(ChunkOptions, "max_tokens", "--max-tokens")]
ChunkerOpt = Annotated[str | None, _field(ChunkOptions, "chunker", "--chunker")]
EnricherOpt = Annotated[list[str] | None, _field(ChunkOptions, "enrichers", "--enricher", more="Repeatable.")]
BatchSizeOpt = Annotated[int | None, _field(EmbedOptions, "batch_size", "--batch-size")]
PoolSizeOpt = Annotated[int | None, _field(EmbedOptions, "pool_size", "--pool-size")]
EmbedBackendOpt = Annotated[EmbedBackend | None, _field(EmbedOptions, "backend", "--embed-backend")]
PresetOpt = Annotated[Preset | None, _field(IngestOptions, "preset", "--preset")]
WindowOpt = Annotated[int | None, _field(IngestOptions, "window", "--window")]
MaxDeleteRatioOpt = Annotated[float | None, _field(IngestOptions, "max_delete_ratio", "--max-delete-ratio")]
DocTimeoutOpt = Annotated[float | None, _field(ParseOptions, "timeout_s", "--doc-timeout")]
DocMemoryOpt = Annotated[int | None, _field(ParseOptions, "max_memory_mb", "--doc-memory-mb")]
IsolationOpt = Annotated[Isolation | None, _field(ParseOptions, "isolation", "--isolation")]
WorkersOpt = Annotated[int | None, _field(IngestOptions, "workers", "--workers")]
MaxDocAttemptsOpt = Annotated[int | None, _field(IngestOptions, "max_doc_attempts", "--max-doc-attempts")]
MaxFailureRatioOpt = Annotated[float | None, _field(IngestOptions, "max_failure_ratio", "--max-failure-ratio")]
BreakerMinDocsOpt = Annotated[int | None, _field(IngestOptions, "breaker_min_docs", "--breaker-min-docs")]


def _run_options(include: list[str] | None = None, exclude: list[str] | None = None, git_ref: str | None = None,
                 git_path: str | None = None, follow_symlinks: bool = False, pdf_mode: PdfMode | None = None,
                 ocr: OcrMode | None = None, ocr_lang: str | None = None, doc_timeout: float | None = None,
                 doc_memory_mb: int | None = None, isolation: Isolation | None = None, max_tokens: int | None = None,
                 chunker: str | None = None, enricher: list[str] | None = None, model: str | None = None,
                 batch_size: int | None = None, pool_size: int | None = None,
                 embed_backend: EmbedBackend | None = None, bm25_language: str | None = None,
                 **run: Any) -> IngestOptions:
    """The options of a run's flags (``ingest``'s and ``watch``'s): only those given, so a preset fills the rest;
    an invalid one ends the command with exit 2, naming it."""
    from pydantic import ValidationError

    from docingest.settings import get_settings

    def given(**kw: Any) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

    try:
        return IngestOptions(
            source=SourceOptions(**given(include=include, exclude=exclude, git_ref=git_ref, git_path=git_path,
                                         follow_symlinks=(follow_symlinks or get_settings().follow_symlinks) or None)),
            parse=ParseOptions(**given(pdf_mode=pdf_mode, ocr=ocr, timeout_s=doc_timeout, isolation=isolation,
                                       max_memory_mb=doc_memory_mb, ocr_lang=ocr_lang)),
            chunk=ChunkOptions(**given(max_tokens=max_tokens, chunker=chunker, enrichers=enricher)),
            embed=EmbedOptions(**given(model=model, batch_size=batch_size, pool_size=pool_size,
                                       backend=embed_backend)),
            store=StoreOptions(**given(bm25_language=bm25_language)),
            **given(**run),
        )
    except ValidationError as exc:
        raise _fail(f"invalid option: {exc.errors()[0]['loc'][-1]}: {exc.errors()[0]['msg']}") from None


@app.command()
def ingest(
    collection: OptCollectionOpt = None,
    source: Annotated[
        str | None,
        typer.Argument(help="Folder or file, file:// URI, s3://bucket/prefix, or a git URL (with --git-ref/--git-path)."),
    ] = None,
    qdrant_path: QdrantPathOpt = None,
    qdrant_url: QdrantUrlOpt = None,
    collection_block: CollectionBlockOpt = None,
    qdrant_block: QdrantBlockOpt = None,
    embedder_block: EmbedderBlockOpt = None,
    result_storage: ResultStorageOpt = None,
    task_runner: Annotated[
        str | None, typer.Option("--task-runner", help="threads or dask: where parse-and-chunk tasks run "
                                 "\\[env: DOCINGEST_TASK_RUNNER].")
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option("--dask-address", help="Dask scheduler (tcp://host:8786) for --task-runner dask; "
                                 "default: a local cluster \\[env: DOCINGEST_DASK_ADDRESS].")
    ] = None,
    pdf_mode: PdfModeOpt = None,
    ocr: OcrOpt = None,
    ocr_lang: OcrLangOpt = None,
    model: ModelOpt = None,
    bm25_language: Bm25LanguageOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    source_block: SourceBlockOpt = None,
    git_ref: GitRefOpt = None,
    git_path: GitPathOpt = None,
    follow_symlinks: FollowSymlinksOpt = False,
    max_tokens: MaxTokensOpt = None,
    chunker: ChunkerOpt = None,
    enricher: EnricherOpt = None,
    batch_size: BatchSizeOpt = None,
    pool_size: PoolSizeOpt = None,
    embed_backend: EmbedBackendOpt = None,
    preset: PresetOpt = None,
    window: WindowOpt = None,
    mode: Annotated[SyncMode | None, _field(IngestOptions, "mode", "--mode")] = None,
    max_delete_ratio: MaxDeleteRatioOpt = None,
    force: Annotated[bool, _field(IngestOptions, "force", "--force")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")] = False,
    doc_timeout: DocTimeoutOpt = None,
    doc_memory_mb: DocMemoryOpt = None,
    isolation: IsolationOpt = None,
    workers: WorkersOpt = None,
    max_doc_attempts: MaxDocAttemptsOpt = None,
    max_failure_ratio: MaxFailureRatioOpt = None,
    breaker_min_docs: BreakerMinDocsOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Parse, chunk, embed and upsert every new or changed document of SOURCE into a collection."""
    started = time.monotonic()
    _quiet_environment(verbose)
    from docingest import ephemeral

    early = None if dry_run else ephemeral.start_early()  # boots while we import and check the inputs

    from docingest.core import progress
    from docingest.exceptions import CircuitBreakerOpen, ConfigurationError, DocingestError
    from docingest.flows.planning import lists_cheaply, nothing_to_write, plan_for, preflight, warm_up
    from docingest.flows.runspec import RunInputs, pinned, resolve_spec
    from docingest.settings import get_settings

    target = _qdrant_target(qdrant_path, qdrant_url)  # checks the settings first
    if bool(source) == bool(source_block):
        raise _fail("give either SOURCE or --source-block")
    if not collection and not collection_block:
        raise _fail("give --collection or --collection-block")
    blocks: dict[str, Any] = dict(qdrant_block=qdrant_block, source_block=source_block,
                                  collection_block=collection_block)

    options = _run_options(
        include=include, exclude=exclude, git_ref=git_ref, git_path=git_path, follow_symlinks=follow_symlinks,
        pdf_mode=pdf_mode, ocr=ocr, ocr_lang=ocr_lang, doc_timeout=doc_timeout, doc_memory_mb=doc_memory_mb,
        isolation=isolation, max_tokens=max_tokens, chunker=chunker, enricher=enricher, model=model,
        batch_size=batch_size, pool_size=pool_size, embed_backend=embed_backend, bm25_language=bm25_language,
        workers=workers, window=window, preset=preset, mode=mode, max_delete_ratio=max_delete_ratio,
        force=force or None, max_doc_attempts=max_doc_attempts, max_failure_ratio=max_failure_ratio,
        breaker_min_docs=breaker_min_docs)

    # The run is resolved once (source opened, model found, options resolved): preflight, the dry run, the warm-up
    # and the flow (through the pinned spec) all use this one.
    inputs = RunInputs(source=source, collection=collection, options=options, qdrant=target,
                       embedder_block=embedder_block, **blocks)
    try:
        spec = resolve_spec(inputs)
        preflight(spec, result_storage)
        if not dry_run and (task_runner or dask_address or get_settings().prefect.task_runner == "dask"):
            from docingest.flows.runners import check_scheduler

            check_scheduler(task_runner or "dask", dask_address)  # a wrong address: one line, nothing started
        if dry_run:
            _print_plan(plan_for(spec), spec.collection, as_json)
            raise typer.Exit(EXIT_OK)
    except DocingestError as exc:
        raise _fail(str(exc)) from None

    bar = None
    if not as_json and err.is_terminal or (not as_json and os.environ.get("DOCINGEST_FORCE_PROGRESS")):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.description}"), console=err, transient=True)
        task_id = bar.add_task("", total=None)

        def on_progress(event: progress.ProgressEvent) -> None:
            bar.update(task_id, completed=event.done, total=event.total, description=event.path[-60:])

        def on_page(event: progress.PageEvent) -> None:
            bar.update(task_id, description=f"{event.path[-40:]}: OCR page {event.done}/{event.total}")

        progress.add_listener(on_progress)
        progress.add_page_listener(on_page)
        bar.start()
    # While the temporary server boots: plan a re-sync of a local folder. With nothing to write it is answered from
    # the plan (no flow run: nothing outlives this process to watch one); otherwise the workers and model warm up.
    aborted = unchanged = plan = None
    if early is not None and not (task_runner or dask_address):
        with contextlib.suppress(Exception):  # only ever saves time; the run itself reports any problem
            if spec.exists and lists_cheaply(spec):
                plan = plan_for(spec)
                unchanged = None if get_settings().prefect.record_unchanged_runs else nothing_to_write(spec, plan)
            if unchanged is None:
                warm_up(spec, plan)
    if unchanged is not None:
        ephemeral.discard(early)
        if bar is not None:
            bar.stop()
        _finish_unchanged(unchanged, time.monotonic() - started, as_json)
    from docingest.flows.ingest import ingest_documents
    from docingest.flows.runners import make_task_runner

    _run_logs_to_api_only(verbose)
    ephemeral.adopt(early)
    try:
        flow = ingest_documents
        if task_runner or dask_address:
            flow = ingest_documents.with_options(
                task_runner=cast(Any, make_task_runner(task_runner or "dask", dask_address)))
        with ephemeral.run_settings(early), pinned(inputs, spec):
            result = flow(source=source, collection=collection, options=options, qdrant=target,
                          embedder_block=embedder_block, result_storage=result_storage, **blocks)
    except CircuitBreakerOpen as exc:
        result, aborted = exc.result, str(exc)
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None
    except DocingestError as exc:  # e.g. Qdrant unreachable before any document was processed
        raise _fail(str(exc)) from None
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        sys.stdout.write(json.dumps(result.to_json_dict()) + "\n")
    else:
        _print_summary(result)
    if aborted:
        err.print(f"error: {aborted}", markup=False, highlight=False)
    raise typer.Exit(EXIT_OK if result.ok and not aborted else EXIT_FAILED_DOCS)


def _finish_unchanged(result: IngestResult, duration_s: float, as_json: bool) -> None:
    """Report a re-sync that had nothing to write (metrics included, as a flow run would push them) and exit."""
    from docingest.core.metrics import Pusher, RunMetrics
    from docingest.settings import get_settings

    result.duration_s = duration_s
    metrics = RunMetrics(result.collection, result.source)
    pusher = Pusher(metrics, get_settings().pushgateway_url)  # no-op without DOCINGEST_PUSHGATEWAY_URL
    metrics.finish(result, succeeded=result.ok)
    pusher.close()
    if as_json:
        sys.stdout.write(json.dumps(result.to_json_dict()) + "\n")
    else:
        _print_summary(result)
        err.print("up to date: nothing to write, so no flow run was started on Prefect's temporary API "
                  "(DOCINGEST_RECORD_UNCHANGED_RUNS=1 starts one)", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED_DOCS)


def _print_plan(plan: Plan, collection: str, as_json: bool) -> None:
    data = plan.to_json_dict(collection)
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"plan for {collection!r} ({data['mode']}, dry run: nothing written)")
    for key in data["counts"]:
        table.add_column(key.replace("_", " "), justify="right")
    table.add_row(*map(str, data["counts"].values()))
    out.print(table)
    for key in ("new", "changed", "deleted", "dead_letter"):
        for path in data[key]:
            out.print(f"  {key:<11} {path}", highlight=False)
    for item in data["skipped"]:
        out.print(f"  {'skipped':<11} {item['path']}: {item['reason']}", highlight=False)


def _print_summary(result: IngestResult) -> None:
    d, c = result.documents, result.chunks
    table = Table(title=f"collection {result.collection!r} ({result.mode})", caption=f"source {result.source}",
                  show_header=True)
    table.add_column("documents")
    table.add_column("", justify="right")
    table.add_column("chunks")
    table.add_column("", justify="right")
    rows = [("seen", d.seen, "embedded", c.embedded), ("new", d.new, "upserted", c.upserted),
            ("changed", d.changed, "deleted", c.deleted), ("unchanged", d.unchanged, "", ""),
            ("deleted", d.deleted, "", ""), ("skipped", d.skipped, "", ""), ("failed", d.failed, "", ""),
            ("dead letter", len(result.dead_letter), "", "")]
    for row in rows:
        table.add_row(*map(str, row))
    out.print(table)
    if result.failures:
        failures = Table(title="failed documents", show_header=True)
        failures.add_column("document", overflow="fold")
        failures.add_column("stage")
        failures.add_column("error", overflow="fold")
        for f in result.failures:
            failures.add_row(f.path or f.source, f.stage, f.error)
        out.print(failures)
    if result.skipped:
        skipped = Table(title="skipped documents", show_header=True)
        skipped.add_column("document", overflow="fold")
        skipped.add_column("reason", overflow="fold")
        for s in result.skipped:
            skipped.add_row(s.path or s.source, s.reason)
        out.print(skipped)
    out.print(f"done in {result.duration_s:.1f}s" + (f", flow run {result.flow_run_id}" if result.flow_run_id else ""))


@app.command()
def watch(
    source: Annotated[
        str | None, typer.Argument(help="Folder, s3://bucket/prefix, or a git URL (with --git-ref/--git-path).")
    ] = None,
    collection: OptCollectionOpt = None,
    qdrant_path: QdrantPathOpt = None,
    qdrant_url: QdrantUrlOpt = None,
    collection_block: CollectionBlockOpt = None,
    qdrant_block: QdrantBlockOpt = None,
    embedder_block: EmbedderBlockOpt = None,
    result_storage: ResultStorageOpt = None,
    pdf_mode: PdfModeOpt = None,
    ocr: OcrOpt = None,
    ocr_lang: OcrLangOpt = None,
    model: ModelOpt = None,
    bm25_language: Bm25LanguageOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    source_block: SourceBlockOpt = None,
    git_ref: GitRefOpt = None,
    git_path: GitPathOpt = None,
    follow_symlinks: FollowSymlinksOpt = False,
    max_tokens: MaxTokensOpt = None,
    chunker: ChunkerOpt = None,
    enricher: EnricherOpt = None,
    batch_size: BatchSizeOpt = None,
    pool_size: PoolSizeOpt = None,
    embed_backend: EmbedBackendOpt = None,
    preset: PresetOpt = None,
    window: WindowOpt = None,
    max_delete_ratio: Annotated[
        float | None, typer.Option("--max-delete-ratio", help="Refuse a batch (or a reconcile) that would delete "
                                   "more than this share of the source's documents \\[default: 0.5].")
    ] = None,
    doc_timeout: DocTimeoutOpt = None,
    doc_memory_mb: DocMemoryOpt = None,
    isolation: IsolationOpt = None,
    workers: WorkersOpt = None,
    max_doc_attempts: MaxDocAttemptsOpt = None,
    max_failure_ratio: MaxFailureRatioOpt = None,
    breaker_min_docs: BreakerMinDocsOpt = None,
    debounce_ms: Annotated[
        int, typer.Option("--debounce-ms", min=0, help="Quiet period: a batch starts once no change came for this "
                          "long (an editor's save is several events).")
    ] = 200,
    rescan_s: Annotated[
        float, typer.Option("--rescan-s", min=1, help="Reconcile the whole source this often, so a missed event "
                            "costs latency, never correctness.")
    ] = 600.0,
    poll_s: Annotated[
        float | None, typer.Option("--poll-s", min=0.1, help="Check a bucket or a repository for changes this "
                                   "often (default 30), or a folder whose file-system events the kernel refuses "
                                   "(default 2).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout: ready, then one per "
                                          "indexed, deleted, failed or skipped document.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Keep a collection in sync with a folder, a bucket or a repository: one sync, then each change as it comes.

    A folder's changes are seen at once (file-system events).
    A bucket's listing and a repository's ref are checked every --poll-s seconds.
    The process stays warm (model, parse workers, store); each batch of changes is a flow run.

    Other commands read the store through it (search, export, eval). SIGTERM or Ctrl-C ends it (exit 0).
    """
    import logging
    import signal
    import threading

    _quiet_environment(verbose)
    from docingest import ephemeral

    early = ephemeral.start_early()
    target = _qdrant_target(qdrant_path, qdrant_url)
    if bool(source) == bool(source_block):
        raise _fail("give either SOURCE or --source-block")
    if not collection and not collection_block:
        raise _fail("give --collection or --collection-block")
    from docingest.exceptions import ConfigurationError, DocingestError
    from docingest.live import LiveSync, RunBlocks, WatchOptions

    options = _run_options(
        include=include, exclude=exclude, git_ref=git_ref, git_path=git_path, follow_symlinks=follow_symlinks,
        pdf_mode=pdf_mode, ocr=ocr, ocr_lang=ocr_lang, doc_timeout=doc_timeout, doc_memory_mb=doc_memory_mb,
        isolation=isolation, max_tokens=max_tokens, chunker=chunker, enricher=enricher, model=model,
        batch_size=batch_size, pool_size=pool_size, embed_backend=embed_backend, bm25_language=bm25_language,
        workers=workers, window=window, preset=preset, max_delete_ratio=max_delete_ratio,
        max_doc_attempts=max_doc_attempts, max_failure_ratio=max_failure_ratio, breaker_min_docs=breaker_min_docs)
    try:
        live = LiveSync(source, collection, options, target,
                        WatchOptions(debounce_ms=debounce_ms, rescan_s=rescan_s, poll_s=poll_s),
                        emit=_watch_printer(as_json),
                        blocks=RunBlocks(source_block=source_block, collection_block=collection_block,
                                         qdrant_block=qdrant_block, embedder_block=embedder_block,
                                         result_storage=result_storage))
    except DocingestError as exc:
        raise _fail(str(exc)) from None

    watch_log = logging.getLogger("docingest.watch")
    watch_log.setLevel(logging.INFO if verbose else logging.WARNING)
    if not watch_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        watch_log.addHandler(handler)
        watch_log.propagate = False  # one line each, not a second one from Prefect's handler on the root logger
    _run_logs_to_api_only(verbose)
    ephemeral.adopt(early)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with ephemeral.run_settings(early):
                live.run(stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker = threading.Thread(target=run, name="docingest-watch", daemon=True)
    worker.start()
    while worker.is_alive() and not stop.is_set():
        stop.wait(0.5)
    worker.join(timeout=8)  # the batch in progress finishes (or is abandoned below)
    if worker.is_alive():
        # A batch still running after 8 s is abandoned as a crash would leave it: the points it wrote are
        # overwritten and its manifest completed by the next run (the crash tests show the result equals a clean run).
        err.print("the batch in progress is abandoned: the next watch or ingest finishes it", markup=False)
        sys.stdout.flush()
        ephemeral.stop_temporary_servers()
        os._exit(EXIT_OK)
    if failure:
        broke = failure[0]
        # A source, block or store that cannot be used is found as the watch opens the run: exit 2, as ingest does.
        raise _fail(str(broke) if isinstance(broke, DocingestError) else f"{type(broke).__name__}: {broke}",
                    code=EXIT_CONFIG if isinstance(broke, ConfigurationError) else EXIT_FAILED_DOCS) from None
    raise typer.Exit(EXIT_OK)


def _watch_printer(as_json: bool) -> Callable[[dict[str, Any]], None]:
    """The watch's events: JSON lines (flushed at once), or one readable line per document."""

    def emit(event: dict) -> None:
        if as_json:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
            return
        when = time.strftime("%H:%M:%S", time.localtime(event.get("at", time.time())))
        kind = event["event"]
        if kind == "ready":
            line = f"{when} watching {event.get('documents')} documents in {event['collection']} ({event.get('watching')})"
        elif kind in ("paused", "error"):
            line = f"{when} {kind}: {event.get('path') or event.get('error')}"
        else:
            detail = f"{event['chunks']} chunks" if kind == "indexed" else (event.get("error") or "")
            line = f"{when} {kind} {event['path']}" + (f" ({detail})" if detail else "")
        out.print(line, markup=False, highlight=False, soft_wrap=True)

    return emit


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: CollectionOpt,
    qdrant_path: QdrantPathOpt = None,
    qdrant_url: QdrantUrlOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-k", min=1, max=1000, help="Number of hits.")] = 5,
    mode: ModeOpt = None,
    fusion: FusionOpt = "rrf",
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Find the chunks that best match QUERY in a collection."""
    _quiet_environment(verbose)
    from docingest.exceptions import DocingestError
    from docingest.retrieval import search as run_search

    target = _qdrant_target(qdrant_path, qdrant_url)
    try:
        hits = run_search(query, collection, limit=limit, qdrant=target, mode=mode, fusion=fusion)
    except DocingestError as exc:
        raise _fail(str(exc)) from None
    if hits.note:
        err.print(f"note: {hits.note}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(hits.to_json_dict()) + "\n")  # the hits, and how they were found
        return
    if not hits:
        out.print("no hits")
        return
    table = Table(show_header=True, show_lines=True)
    table.add_column("score", justify="right")
    table.add_column("document")
    table.add_column("text")
    for h in hits:
        where = h.path + (f" #{h.chunk_index}") + (f" p.{','.join(map(str, h.pages))}" if h.pages else "")
        heading = (" > ".join(h.headings) + "\n") if h.headings else ""
        text = h.text if len(h.text) < 400 else h.text[:400] + "…"
        table.add_row(f"{h.score:.3f}", where, f"[dim]{heading}[/]{text}")
    out.print(table)


@app.command()
def export(
    collection: CollectionOpt,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    vectors: Annotated[bool, typer.Option("--vectors", help="Include each point's vectors.")] = False,
    qdrant_path: QdrantPathOpt = None,
    qdrant_url: QdrantUrlOpt = None,
) -> None:
    """Write a collection's points as JSON Lines: {"id", "payload"[, "vector"]}."""
    _quiet_environment(False)
    from docingest.exceptions import DocingestError
    from docingest.export import export_collection

    target = _qdrant_target(qdrant_path, qdrant_url)
    try:
        if output is None:
            written = export_collection(collection, sys.stdout, vectors, target)
        else:
            tmp = output.with_name(f".{output.name}.partial")
            with open(tmp, "w", encoding="utf-8") as fh:
                written = export_collection(collection, fh, vectors, target)
            tmp.replace(output)  # a failed export leaves no file that looks complete
    except DocingestError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc.strerror or exc}") from None
    err.print(f"{written} points of {collection} exported" + (f" to {output}" if output else ""), highlight=False)


@app.command("convert-store")
def convert_store(qdrant_path: QdrantPathOpt = None) -> None:
    """Convert a store written by qdrant-client's local mode to Qdrant Edge.

    In place: copies every collection, manifest and alias of the folder written by docingest before Qdrant Edge,
    verifies the counts, and leaves the old files where they are."""
    _quiet_environment(False)
    from docingest.core.store.convert import convert_local_mode
    from docingest.exceptions import DocingestError
    from docingest.settings import get_settings

    root = qdrant_path or get_settings().resolved_qdrant_path()
    try:
        report = convert_local_mode(root)
    except DocingestError as exc:
        raise _fail(str(exc)) from None
    if report.already:
        out.print(f"{root} is converted already: nothing to do", soft_wrap=True, highlight=False)
        return
    for name, points in report.collections.items():
        out.print(f"{name}: {points} points", soft_wrap=True, highlight=False)
    for alias, target in report.aliases.items():
        out.print(f"alias {alias} -> {target}", soft_wrap=True, highlight=False)
    out.print(f"converted {len(report.collections)} collections in {root}; the old files (meta.json, collection/) "
              "are still there: remove them once you are satisfied", soft_wrap=True, highlight=False)


@app.command()
def doctor(
    source: Annotated[str | None, typer.Argument(help="Also list this source (checks its credentials).")] = None,
    source_block: Annotated[str | None, typer.Option("--source-block", help="Also open this saved source block.")
                            ] = None,
    qdrant_path: QdrantPathOpt = None,
    qdrant_url: QdrantUrlOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Check the Prefect API, Qdrant, the embedding model, PDF models, OCR, and configured credentials.

    Exit 0 when every required part works (PDF models and OCR are optional), 1 otherwise.
    """
    _quiet_environment(verbose)
    import warnings

    from rich.text import Text

    from docingest.doctor import report, run_checks

    warnings.filterwarnings("ignore", module=r"qdrant_client\..*")

    data = report(run_checks(source, source_block, _qdrant_target(qdrant_path, qdrant_url)))
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        table = Table(title="docingest doctor", show_header=True)
        for column in ("check", "", "detail"):
            table.add_column(column)
        for c in data["checks"]:
            mark = "[green]ok[/]" if c["ok"] else ("[red]FAIL[/]" if c["required"] else "[yellow]missing[/]")
            table.add_row(c["name"], mark, Text(c["detail"]))
        out.print(table)
    raise typer.Exit(EXIT_OK if data["ok"] else EXIT_FAILED_DOCS)


@app.command("eval")
def eval_command(
    collection: CollectionOpt,
    queries: Annotated[Path, typer.Option("--queries", help="BEIR queries JSONL ({\"_id\", \"text\"} per line).")],
    qrels: Annotated[Path, typer.Option("--qrels", help="BEIR qrels TSV: query-id, corpus-id, score.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="Cut-off of the metrics.")] = 10,
    match: Annotated[
        str, typer.Option("--match", help="How qrels' corpus ids name documents: 'stem' (file name without its "
                          "extension; two files with one stem in different folders count as one) or a payload field, "
                          "e.g. path or doc_id.")
    ] = "stem",
    candidates: Annotated[
        int | None, typer.Option("--candidates", help="Chunks retrieved per query before ranking documents "
                                 "\\[default: max(50, 10k)].")
    ] = None,
    mode: ModeOpt = None,
    fusion: FusionOpt = "rrf",
    qdrant_path: QdrantPathOpt = None,
    qdrant_url: QdrantUrlOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Measure retrieval quality on a query set: nDCG@k, recall@k, MRR and the worst queries."""
    _quiet_environment(verbose)
    from docingest.evaluate import evaluate, load_qrels, load_queries, render
    from docingest.exceptions import DocingestError

    target = _qdrant_target(qdrant_path, qdrant_url)
    try:
        report = evaluate(collection, load_queries(queries), load_qrels(qrels), k=k, match=match, qdrant=target,
                          candidates=candidates, mode=mode, fusion=fusion)
    except DocingestError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(report.to_json_dict()) + "\n")
    else:
        render(report, out)


@app.command()
def migrate(
    collection: CollectionOpt,
    model: Annotated[str, typer.Option("--model", help="The new sentence-transformers model (name or path), or "
                                       "plugin:NAME.")],
    sources: Annotated[
        list[str] | None, typer.Argument(help="Sources to re-read (default: those recorded in the collection).")
    ] = None,
    source_block: Annotated[str | None, typer.Option("--source-block", help="Saved source block to re-read.")] = None,
    embed_backend: Annotated[EmbedBackend | None, _field(EmbedOptions, "backend", "--embed-backend")] = None,
    preset: Annotated[Preset | None, _field(IngestOptions, "preset", "--preset")] = None,
    pdf_mode: Annotated[PdfMode | None, _field(ParseOptions, "pdf_mode", "--pdf-mode")] = None,
    keep_old: Annotated[bool, typer.Option("--keep-old", help="Keep the previous collection after the switch.")
                        ] = False,
    allow_failures: Annotated[
        bool, typer.Option("--allow-failures", help="Switch even if some documents failed in the rebuild.")
    ] = False,
    qdrant_path: QdrantPathOpt = None,
    qdrant_url: QdrantUrlOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Change a collection's embedding model: build <name>__v<N+1> with it, then switch the alias <name>.

    Search and syncs keep using the old collection until the new one is complete. Exit 0 switched, 1 not switched
    (documents failed), 2 configuration error.
    """
    _quiet_environment(verbose)
    from docingest.exceptions import DocingestError
    from docingest.migrate import migrate_collection

    target = _qdrant_target(qdrant_path, qdrant_url)
    _run_logs_to_api_only(verbose)
    options = IngestOptions.model_validate({"parse": {"pdf_mode": pdf_mode} if pdf_mode else {},
                                            "embed": {"backend": embed_backend} if embed_backend else {},
                                            **({"preset": preset} if preset else {})})
    try:
        result = migrate_collection(collection, model, sources=sources or None, source_block=source_block,
                                    options=options, qdrant=target, keep_old=keep_old,
                                    allow_failures=allow_failures)
    except DocingestError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        sys.stdout.write(result.model_dump_json() + "\n")
    elif result.switched:
        out.print(f"{collection!r} now points at {result.new} ({result.model}): {result.documents} documents, "
                  f"{result.chunks} chunks in {result.duration_s:.1f}s; {result.old} "
                  + ("deleted" if result.old_deleted else "kept"), highlight=False)
    if not result.switched:
        err.print(f"error: {result.reason}", markup=False, highlight=False)
    raise typer.Exit(EXIT_OK if result.switched else EXIT_FAILED_DOCS)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    watch: Annotated[
        list[str] | None, typer.Option("--watch", metavar="SOURCE=COLLECTION", help="Also keep this folder, "
                                       "s3://bucket/prefix or git URL live in the collection, as `docingest watch` "
                                       "does. Repeatable.")
    ] = None,
    poll_s: Annotated[
        float | None, typer.Option("--poll-s", min=0.1, help="With --watch: check buckets and repositories this "
                                   "often (default 30; bucket notifications come at once).", show_default=False)
    ] = None,
    rescan_s: Annotated[
        float, typer.Option("--rescan-s", min=1, help="With --watch: reconcile each whole source this often.")
    ] = 600.0,
    verbose: VerboseOpt = False,
) -> None:
    """Run the upload service (FastAPI + uvicorn): resumable uploads that become searchable documents.

    Needs DOCINGEST_JWT_SECRET or DOCINGEST_JWT_JWKS_URL.
    Uploads go to DOCINGEST_UPLOAD_DIR or DOCINGEST_UPLOAD_BUCKET.
    DOCINGEST_UPLOAD_DEPLOYMENT hands ingestion to a Prefect deployment.
    --watch keeps sources live in the same process; buckets may post notifications to /api/v1/notifications/s3.
    OpenAPI at /docs and /openapi.json. SIGTERM finishes the running job first.
    """
    _quiet_environment(verbose)
    import faulthandler
    import signal

    import uvicorn

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack (a stuck job, a hang)

    from docingest.core.memory import limit_arenas
    from docingest.exceptions import DocingestError
    from docingest.live import WatchOptions
    from docingest.service import tempdir
    from docingest.service.app import create_app

    tempdir.use_private()
    settings = _settings()
    try:
        limit_arenas(settings.service.malloc_arenas)  # before the service's threads start
        application = create_app(settings, watch, WatchOptions(poll_s=poll_s, rescan_s=rescan_s))
        _run_logs_to_api_only(verbose)  # the embedded jobs' flow runs log to the API, not to the service's stderr
    except DocingestError as exc:
        raise _fail(str(exc)) from None
    uvicorn.run(application, host=host, port=port, log_level="info" if verbose else "warning",
                timeout_graceful_shutdown=30)


@app.command()
def plugins(as_json: JsonOpt = False) -> None:
    """List installed plugins (parsers, chunkers, embedders, enrichers) and whether each loads.

    Exit 0 when every enabled plugin loads, 1 when one is broken.
    """
    _quiet_environment(False)
    from rich.text import Text

    from docingest import plugins as registry

    found = registry.discover(include_disabled=True)
    off = registry.disabled()
    rows = [{**p.to_json_dict(), "disabled": p.entry_name in off} for p in found]
    broken = [r for r in rows if not r["ok"] and not r["disabled"]]
    if as_json:
        sys.stdout.write(json.dumps({"plugins": rows, "ok": not broken}) + "\n")
    elif not rows:
        out.print("no plugins installed (entry point groups: " + ", ".join(registry.GROUPS.values()) + ")")
    else:
        table = Table(title="docingest plugins", show_header=True)
        for column in ("group", "name", "version", "formats", "capabilities", "package", "status"):
            table.add_column(column)
        for r in rows:
            status = "[dim]disabled[/]" if r["disabled"] else ("[green]ok[/]" if r["ok"] else "[red]broken[/]")
            table.add_row(r["group"], r["name"], r["version"], ", ".join(r["formats"]), ", ".join(r["capabilities"]),
                          f"{r['package']} {r['package_version']}", status)
        out.print(table)
        for r in broken:
            err.print(Text(f"error: {r['kind']} plugin {r['name']!r} ({r['package']}): {r['error']}"), soft_wrap=True)
    raise typer.Exit(EXIT_FAILED_DOCS if broken else EXIT_OK)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    finally:
        if "docingest.core.store" in sys.modules:  # flush embedded shards, release the store's lock
            sys.modules["docingest.core.store"].close_backends()
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    _leave(int(code or 0))


def _leave(code: int) -> None:
    """End the process without the interpreter's teardown: with torch and Docling loaded it spends 1-4 s freeing
    memory the kernel frees anyway (measured; no Python code runs then). The exit handlers still run first: Prefect
    drains its log and event queues and stops its temporary server there."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
