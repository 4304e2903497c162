"""Before the flow writes anything: preflight checks, the plan (``--dry-run``), the CLI's warm-up, the outcomes
the plan knows without parsing."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from docingest.core.embed import LoadedModel
from docingest.core.plan import Action, Plan, PlannedDocument, make_plan
from docingest.core.store import QdrantStore
from docingest.datamodel import IngestResult
from docingest.flows.runspec import RunSpec
from docingest.options import Isolation
from docingest.settings import get_settings
from docingest.targets import resolve_result_storage

if TYPE_CHECKING:
    from docingest.datamodel import PreparedDocument
    from docingest.flows.run import Run


def preflight(spec: RunSpec, result_storage: str | None = None) -> None:
    """Check what resolving the run did not (raises ConfigurationError / StoreError): the PDF mode, that Qdrant
    answers, the result storage. Resolving it already checked the plugins, opened the source and found the model."""
    from docingest.core.parse import resolve_pdf_mode

    resolve_pdf_mode(spec.options.parse.pdf_mode)
    QdrantStore(spec.location).collection_exists("docingest-preflight")
    resolve_result_storage(result_storage)


def warm_up(spec: RunSpec, plan: Plan | None = None) -> bool:
    """Start the parse workers' fork server and load the model in the background when the run will parse and embed;
    the CLI calls it while Prefect's temporary server boots. That is known for a collection that does not exist yet;
    for a re-sync of a local folder, the plan (the dry run's: listing and hashing, no model, each file's hash is
    remembered for the run itself) must find a document to process. Other re-syncs are not warmed up: their listing
    costs requests, and a no-op must stay cheap. ``plan``: the one the caller already made."""
    if spec.exists and not (lists_cheaply(spec) and any(d.action is Action.PROCESS
                                                        for d in (plan or plan_for(spec)).documents)):
        return False
    if get_settings().prefect.task_runner != "threads":
        return True  # a Dask cluster's workers parse and embed: nothing to warm up in this process
    if spec.options.parse.isolation is Isolation.PROCESS:
        from docingest.core.worker import start_server

        start_server()
    if isinstance(spec.model, LoadedModel) and not spec.model.loaded:
        prefetch_model(spec.model)
    return True


def lists_cheaply(spec: RunSpec) -> bool:
    """Whether planning before the run costs no requests: a local folder (listing and hashing; the hashes are
    remembered for the run itself). A bucket or a repository is listed once, by the run."""
    return spec.source.uri.startswith("file://")


def nothing_to_write(spec: RunSpec, plan: Plan) -> IngestResult | None:
    """The result of a re-sync that has nothing to write, or None when it has something.

    Nothing to write: the collection exists, every document is unchanged, skipped by the listing (and never indexed)
    or dead-lettered, none is to be deleted, and the stored points have their BM25 vectors. The flow would open no
    parse worker, load no model and change nothing; the result is the one it would return (the same outcomes,
    through the same accumulator), without a flow run. The CLI answers such a re-sync on Prefect's temporary API
    this way, where nothing outlives the process to watch a run."""
    from docingest.core.sparse import sparse_complete
    from docingest.flows.run import Run

    if not spec.exists or plan.deleted:
        return None
    for p in plan.documents:
        if p.action is Action.PROCESS or leaves_indexed_chunks(p):
            return None  # to parse, or indexed chunks to remove
    language = spec.profile.sparse_language
    if language and spec.physical and not sparse_complete(QdrantStore(spec.location), spec.physical, language):
        return None
    run = Run(spec.collection, spec.source.uri, len(plan.documents))
    run.result.mode = spec.options.mode.value
    record_planned(plan, run, add=None)
    return run.result


def plan_for(spec: RunSpec) -> Plan:
    """The plan a run would follow, computed without writing anything or loading the weights (``--dry-run``)."""
    store = QdrantStore(spec.location)
    known = {}
    if spec.physical is not None and store.collection_exists(store.manifest_name(spec.physical)):
        known = store.manifest(spec.physical, spec.source.uri)
    return make_plan(spec.source.uri, list(spec.source.iter_documents()), known, spec.profile, spec.options)


def prefetch_model(model: LoadedModel) -> None:
    """Load a lazily loaded model in a background thread; a load error surfaces where the model is first used."""

    def load() -> None:
        with contextlib.suppress(Exception):
            model.model  # noqa: B018 - the property loads it

    threading.Thread(target=load, name="docingest-model-load", daemon=True).start()


def leaves_indexed_chunks(p: PlannedDocument) -> bool:
    """A document the listing now leaves out (a link out of the source, a FIFO) that an earlier run indexed: the
    writer must remove its chunks."""
    return p.action is Action.SKIP and bool(p.doc.skip_reason) and p.known is not None and bool(p.known.chunks)


def record_planned(plan: Plan, run: Run, add: Callable[[PreparedDocument], None] | None) -> None:
    """The outcomes the plan knows without parsing: unchanged, skipped by the listing, dead-lettered. A document the
    listing now leaves out (a link out of the source, a FIFO) but an earlier run indexed goes to ``add`` (the
    writer), so its chunks are removed and nothing read through a link that is no longer followed stays searchable."""
    from docingest.datamodel import DeadLetterItem, DocumentOutcome, DocumentStatus, PreparedDocument, Stage

    for p in plan.documents:
        if leaves_indexed_chunks(p):
            if add is None:  # nothing_to_write() hands no writer: it returns early for such a document
                raise ValueError(f"{p.doc.path}: its indexed chunks must be removed, and no writer was given")
            add(PreparedDocument(document=p.doc, change=p.change, status=DocumentStatus.SKIPPED, stage=Stage.DISCOVER,
                                 error=p.reason))
        elif p.action is Action.SKIP:
            run.record(DocumentOutcome(source=p.doc.uri, path=p.doc.path, status=DocumentStatus.SKIPPED,
                                       change=p.change, stage=Stage.DISCOVER, error=p.reason))
        elif p.action is Action.UNCHANGED:
            run.record(DocumentOutcome(source=p.doc.uri, path=p.doc.path, status=DocumentStatus.UNCHANGED,
                                       change=p.change, chunks=p.known.chunks if p.known else 0))
        elif p.action is Action.DEAD_LETTER:
            assert p.known is not None  # dead-lettered: its failures are on record
            stage = p.known.stage or Stage.PARSE
            run.result.dead_letter.append(DeadLetterItem(source=p.doc.uri, stage=stage.value,
                                                         error=p.known.error or "", attempts=p.known.attempts))
            run.record(DocumentOutcome(source=p.doc.uri, path=p.doc.path, status=DocumentStatus.FAILURE,
                                       change=p.change, stage=stage, error=p.reason), processed=False)
