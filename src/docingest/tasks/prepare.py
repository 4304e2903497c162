"""Parse and chunk one document (a task per document, never per chunk)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from docingest.core.embed import LoadedModel
from docingest.core.pipeline import prepare_document
from docingest.core.plan import Profile
from docingest.core.sources import Source
from docingest.datamodel import ChangeKind, PreparedDocument, SourceDocument
from docingest.options import IngestOptions


@task(name="parse-and-chunk", task_run_name="parse-and-chunk {doc.path}", cache_policy=NO_CACHE)
def prepare_document_task(
    source: Source,
    doc: SourceDocument,
    change: ChangeKind,
    profile: Profile,
    options: IngestOptions,
    model: LoadedModel,
) -> PreparedDocument:
    """Convert one document with Docling and split it with HybridChunker; failures come back as its status."""
    return prepare_document(source, doc, change, profile, options, model)
