"""Parse and chunk one document (a task per document, never per chunk), cached across runs for crash-resume."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from prefect import task
from prefect.context import TaskRunContext

from docingest.core.embed import LoadedModel
from docingest.core.pipeline import prepare_document
from docingest.core.plan import Profile
from docingest.core.sources import Source
from docingest.datamodel import ChangeKind, DocumentStatus, PreparedDocument, SourceDocument
from docingest.options import IngestOptions
from docingest.tasks.common import PARSE_TAGS


@lru_cache(maxsize=1)
def code_version() -> str:
    """docingest's version plus a hash of the stage code, so a code change never reuses an old cached result."""
    from docingest import __version__, __version_schema__

    core = Path(__file__).resolve().parents[1] / "core"
    digest = hashlib.sha256(f"{__version__}/{__version_schema__}".encode())
    for name in ("parse.py", "ocr.py", "chunk.py", "pipeline.py", "worker.py"):
        digest.update((core / name).read_bytes())
    return digest.hexdigest()[:12]


def prepare_cache_key(context: TaskRunContext, parameters: dict) -> str:
    """Content hash + settings fingerprint + code version (+ attempt, so a failure is retried, not replayed).

    Built from plain strings only: clients, models and sources are never hashed (Prefect would silently skip
    caching for unserializable inputs).
    """
    key = _document_key(parameters["doc"], parameters["profile"], parameters.get("attempt", 0))
    return "docingest-prepare-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _document_key(doc: SourceDocument, profile: Profile, attempt: int) -> str:
    return (f"{doc.source_uri}\n{doc.path}\n{doc.content_hash}\n{profile.fingerprint_for(doc.path)}\n{code_version()}"
            f"\n{attempt}")


def prepare_batch_cache_key(context: TaskRunContext, parameters: dict) -> str:
    """The batch's documents' keys, in order: the same documents, unchanged, in the same batch hit the cache."""
    profile: Profile = parameters["profile"]
    keys = "\n\n".join(_document_key(doc, profile, attempt) for doc, _, attempt in parameters["items"])
    return "docingest-prepare-batch-" + hashlib.sha256(keys.encode()).hexdigest()[:32]


class PrepareFailed(Exception):  # noqa: N818 - a task outcome, not an error of ours
    """Raised by the task for a failed document, so Prefect marks the run Failed and never caches the failure
    (a transient read error must not be replayed to a later run); carries the document's outcome."""

    def __init__(self, prepared: PreparedDocument | list[PreparedDocument]) -> None:
        failed = [p for p in (prepared if isinstance(prepared, list) else [prepared])
                  if p.status is DocumentStatus.FAILURE]
        super().__init__("; ".join(f"{p.document.path}: {p.stage.value if p.stage else '?'}: {p.error}"
                                   for p in failed[:5]))
        self.prepared = prepared

    def __reduce__(self) -> tuple[type[PrepareFailed],
                                  tuple[PreparedDocument | list[PreparedDocument]]]:  # travels back from a Dask worker with its documents
        return type(self), (self.prepared,)


class _DocumentFailuresWithoutTraceback(logging.Filter):
    """Prefect's task engine logs a task's exception with its traceback. A failed document is an outcome, not a bug:
    its task run still ends Failed and the line still names the document, stage and reason (the flow adds one
    WARNING per failed document too), but a traceback through Prefect's engine would tell the reader of the run's
    Logs tab nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PrepareFailed):
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("prefect.task_runs").addFilter(_DocumentFailuresWithoutTraceback())


@task(
    name="parse-and-chunk",
    task_run_name="parse-and-chunk {doc.path}",
    tags=PARSE_TAGS,
    cache_key_fn=prepare_cache_key,
    cache_expiration=timedelta(days=7),
    persist_result=True,
)
def prepare_document_task(
    source: Source,
    doc: SourceDocument,
    change: ChangeKind,
    profile: Profile,
    options: IngestOptions,
    model: LoadedModel,
    attempt: int = 0,
) -> PreparedDocument:
    """Convert one document with Docling and split it with HybridChunker; failures come back as its status.

    The result is persisted and cached by content: after a crash, a document parsed before the crash is not parsed
    again on the re-run. Failures are raised (PrepareFailed), so they are never cached.
    """
    prepared = prepare_document(source, doc, change, profile, options, model)
    if prepared.status is DocumentStatus.FAILURE:
        raise PrepareFailed(prepared)
    return prepared


@task(
    name="parse-and-chunk-batch",
    task_run_name="parse-and-chunk-batch {label}",
    tags=PARSE_TAGS,
    cache_key_fn=prepare_batch_cache_key,
    cache_expiration=timedelta(days=7),
    persist_result=True,
)
def prepare_documents_task(
    source: Source,
    items: list[tuple[SourceDocument, ChangeKind, int]],
    profile: Profile,
    options: IngestOptions,
    model: LoadedModel,
    label: str = "",
) -> list[PreparedDocument]:
    """Several documents in one task run (``(doc, change, attempt)`` each), one after another: the same work as
    :func:`prepare_document_task` for each, with one task run's orchestration cost for all of them.

    A batch with a failed document raises PrepareFailed carrying every document's outcome, so it is never cached;
    its documents that succeeded are recorded as such by the flow.
    """
    prepared = [prepare_document(source, doc, change, profile, options, model) for doc, change, _ in items]
    if any(p.status is DocumentStatus.FAILURE for p in prepared):
        raise PrepareFailed(prepared)
    return prepared
