"""Before the flow writes anything: options with presets, the model an existing collection was built with, the
source and the profile of a run, the plan (``--dry-run``), preflight checks and the CLI's warm-up."""

from __future__ import annotations

import contextlib
import threading

from docingest.blocks.loading import load_block
from docingest.blocks.sources import open_source_block
from docingest.core.embed import LoadedModel, load_model
from docingest.core.plan import Action, Plan, make_plan, resolve_profile
from docingest.core.sources import open_source
from docingest.core.store import QdrantLocation, QdrantStore
from docingest.exceptions import ConfigurationError
from docingest.options import IngestOptions, Isolation, Preset
from docingest.settings import get_settings
from docingest.targets import QdrantTarget, resolve_result_storage, resolve_target


def preflight(source: str | None, options: IngestOptions, qdrant: QdrantTarget | None = None,
              qdrant_block: str | None = None, source_block: str | None = None, collection: str | None = None,
              collection_block: str | None = None, result_storage: str | None = None) -> None:
    """Check configuration before a run starts (raises ConfigurationError / StoreError): source, PDF mode, Qdrant,
    result storage."""
    from docingest import plugins
    from docingest.core.parse import resolve_pdf_mode

    options = with_preset(options)
    plugins.check(options)
    open_run_source(source, options, source_block)
    resolve_pdf_mode(options.parse.pdf_mode)
    _, location = resolve_target(collection or "preflight", qdrant, qdrant_block, collection_block)
    QdrantStore(location).collection_exists("docingest-preflight")
    resolve_result_storage(result_storage)


def warm_up(collection: str | None, options: IngestOptions, qdrant: QdrantTarget | None = None,
            qdrant_block: str | None = None, collection_block: str | None = None, embedder_block: str | None = None,
            source: str | None = None, source_block: str | None = None) -> bool:
    """Start the parse workers' fork server and load the model in the background when the run will parse and embed;
    the CLI calls it while Prefect's temporary server boots. That is known for a collection that does not exist yet;
    for a re-sync of a local folder, the plan (the dry run's: listing and hashing, no model, each file's hash is
    remembered for the run itself) must find a document to process. Other re-syncs are not warmed up: their listing
    costs requests, and a no-op must stay cheap."""
    given, options = options, with_preset(options)
    name, location = resolve_target(collection, qdrant, qdrant_block, collection_block)
    if embedder_block:
        return False
    if QdrantStore(location).collection_exists(name):
        if source_block or not source or "://" in source:
            return False
        plan, model, options = planned(source, collection, given, qdrant, qdrant_block,
                                        collection_block=collection_block)
        if not any(d.action is Action.PROCESS for d in plan.documents):
            return False
    else:
        settings = get_settings()
        model = load_model(options.embed.model or settings.embed_model, settings.embed_device, options.embed.backend)
    if options.parse.isolation is Isolation.PROCESS and get_settings().task_runner == "threads":
        from docingest.core.worker import start_server

        start_server()
    if isinstance(model, LoadedModel) and not model.loaded:
        prefetch_model(model)
    return True


def plan_documents(source: str | None, collection: str | None, options: IngestOptions | None = None,
                   qdrant: QdrantTarget | None = None, qdrant_block: str | None = None,
                   source_block: str | None = None, collection_block: str | None = None,
                   embedder_block: str | None = None) -> Plan:
    """The plan a run would follow, computed without writing anything (``--dry-run``)."""
    return planned(source, collection, options, qdrant, qdrant_block, source_block, collection_block,
                    embedder_block)[0]


def planned(source: str | None, collection: str | None, options: IngestOptions | None = None,
             qdrant: QdrantTarget | None = None, qdrant_block: str | None = None, source_block: str | None = None,
             collection_block: str | None = None, embedder_block: str | None = None):
    """(plan, model, resolved options) of a run, computed without writing anything or loading the weights."""
    given, options = options, with_preset(options)
    collection, location = resolve_target(collection, qdrant, qdrant_block, collection_block)
    adopt_collection_model(given, options, location, collection, embedder_block)
    src, model, profile = resolve_run(source, options, source_block, embedder_block)
    store = QdrantStore(location)
    physical = store.resolve(collection)
    known = store.manifest(physical, src.uri) if store.collection_exists(store.manifest_name(physical)) else {}
    return make_plan(src.uri, list(src.iter_documents()), known, profile, options), model, options


def with_preset(options: IngestOptions | None, preset: Preset | None = None) -> IngestOptions:
    """The options a run uses: ``preset`` (if given) replaces ``options.preset``, whose values fill every option
    that was not set explicitly."""
    options = options or IngestOptions()
    if preset is not None:
        options = options.model_copy(update={"preset": Preset(preset)})
    return options.resolved()


def adopt_collection_model(given: IngestOptions | None, options: IngestOptions, location: QdrantLocation,
                           collection: str, embedder_block: str | None = None, preset: Preset | None = None) -> None:
    """An existing collection keeps the model (and backend) it was built or migrated with, unless a model is given
    explicitly (options, an embedder block, or DOCINGEST_EMBED_MODEL): a sync after ``docingest migrate`` must not
    re-embed everything with the default model."""

    if options.embed.model or embedder_block or "embed_model" in get_settings().model_fields_set:
        return
    store = QdrantStore(location)
    if not store.collection_exists(collection):
        return
    name, backend = store.collection_model(store.resolve(collection))
    if name is None:
        return
    options.embed.model = name
    backend_given = given is not None and ("backend" in given.embed.model_fields_set or given.preset is not None)
    if not backend_given and preset is None:
        options.embed.backend = backend


def open_run_source(source: str | None, options: IngestOptions, source_block: str | None):
    if source_block:
        return open_source_block(source_block, options.source)
    if not source:
        raise ConfigurationError("give a source or a source block")
    return open_source(source, options.source)


def resolve_run(source: str | None, options: IngestOptions, source_block: str | None = None,
             embedder_block: str | None = None):
    """Source, loaded model and the profile (settings fingerprint) of a run."""
    settings = get_settings()
    src = open_run_source(source, options, source_block)
    name, device = settings.embed_model, settings.embed_device
    if embedder_block:  # block over settings; an explicit options.embed.model over both
        from docingest.blocks.embedder import EmbedderSettings

        embedder = load_block(embedder_block, EmbedderSettings)
        name, device = embedder.model, embedder.device or device
        options.embed.batch_size = embedder.batch_size
    model = load_model(options.embed.model or name, device, options.embed.backend)
    return src, model, resolve_profile(options, model.info)


def prefetch_model(model: LoadedModel) -> None:
    """Load a lazily loaded model in a background thread; a load error surfaces where the model is first used."""

    def load() -> None:
        with contextlib.suppress(Exception):
            model.model  # noqa: B018 - the property loads it

    threading.Thread(target=load, name="docingest-model-load", daemon=True).start()



def record_planned(plan: Plan, run, add) -> None:
    """The outcomes the plan knows without parsing: unchanged, skipped by the listing, dead-lettered. A document the
    listing now leaves out (a link out of the source, a FIFO) but an earlier run indexed goes to ``add`` (the
    writer), so its chunks are removed and nothing read through a link that is no longer followed stays searchable."""
    from docingest.datamodel import DeadLetterItem, DocumentOutcome, DocumentStatus, PreparedDocument, Stage

    for p in plan.documents:
        if p.action is Action.SKIP and p.doc.skip_reason and p.known is not None and p.known.chunks:
            add(PreparedDocument(document=p.doc, change=p.change, status=DocumentStatus.SKIPPED, stage=Stage.DISCOVER,
                                 error=p.reason))
        elif p.action is Action.SKIP:
            run.record(DocumentOutcome(source=p.doc.uri, path=p.doc.path, status=DocumentStatus.SKIPPED,
                                       change=p.change, stage=Stage.DISCOVER, error=p.reason))
        elif p.action is Action.UNCHANGED:
            run.record(DocumentOutcome(source=p.doc.uri, path=p.doc.path, status=DocumentStatus.UNCHANGED,
                                       change=p.change, chunks=p.known.chunks if p.known else 0))
        elif p.action is Action.DEAD_LETTER:
            stage = p.known.stage or Stage.PARSE
            run.result.dead_letter.append(DeadLetterItem(source=p.doc.uri, stage=stage.value,
                                                         error=p.known.error or "", attempts=p.known.attempts))
            run.record(DocumentOutcome(source=p.doc.uri, path=p.doc.path, status=DocumentStatus.FAILURE,
                                       change=p.change, stage=stage, error=p.reason), processed=False)
