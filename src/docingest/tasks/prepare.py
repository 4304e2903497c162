"""Parse and chunk one document (a task per document, never per chunk), cached across runs for crash-resume."""

from __future__ import annotations

import hashlib
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


@lru_cache(maxsize=1)
def code_version() -> str:
    """docingest's version plus a hash of the stage code, so a code change never reuses an old cached result."""
    from docingest import __version__, __version_schema__

    core = Path(__file__).resolve().parents[1] / "core"
    digest = hashlib.sha256(f"{__version__}/{__version_schema__}".encode())
    for name in ("parse.py", "chunk.py", "pipeline.py", "worker.py"):
        digest.update((core / name).read_bytes())
    return digest.hexdigest()[:12]


def prepare_cache_key(context: TaskRunContext, parameters: dict) -> str:
    """Content hash + settings fingerprint + code version (+ attempt, so a failure is retried, not replayed).

    Built from plain strings only: clients, models and sources are never hashed (Prefect would silently skip
    caching for unserializable inputs).
    """
    doc: SourceDocument = parameters["doc"]
    profile: Profile = parameters["profile"]
    key = f"{doc.source_uri}\n{doc.path}\n{doc.content_hash}\n{profile.fingerprint_for(doc.path)}\n{code_version()}"
    key += f"\n{parameters.get('attempt', 0)}"
    return "docingest-prepare-" + hashlib.sha256(key.encode()).hexdigest()[:32]


class PrepareFailed(Exception):  # noqa: N818 - a task outcome, not an error of ours
    """Raised by the task for a failed document, so Prefect marks the run Failed and never caches the failure
    (a transient read error must not be replayed to a later run); carries the document's outcome."""

    def __init__(self, prepared: PreparedDocument) -> None:
        super().__init__(f"{prepared.document.path}: {prepared.stage.value if prepared.stage else '?'}: "
                         f"{prepared.error}")
        self.prepared = prepared


@task(
    name="parse-and-chunk",
    task_run_name="parse-and-chunk {doc.path}",
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
