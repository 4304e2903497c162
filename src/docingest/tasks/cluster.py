"""Parse, chunk and embed a pool of documents on a Dask worker: one task run per pool of documents, never per chunk."""

from __future__ import annotations

from docingest.core.embed import LoadedModel
from docingest.core.plan import Profile
from docingest.core.sources import Source
from docingest.core.write import PreparedPool, prepare_and_embed
from docingest.datamodel import ChangeKind, SourceDocument
from docingest.options import IngestOptions
from docingest.tasks.common import EMBED_TAGS, PARSE_TAGS, count, stage_task

TAGS = list(dict.fromkeys(PARSE_TAGS + EMBED_TAGS))  # a stage limit on parsing or on embedding applies to it


@stage_task("parse-chunk-embed", lambda p: f"parse, chunk and embed {count(len(p['items']), 'document')} "
                                           f"({p['label']})", TAGS, retries=0)
def prepare_and_embed_task(source: Source, items: list[tuple[SourceDocument, ChangeKind]], profile: Profile,
                           options: IngestOptions, model: LoadedModel, label: str = "") -> PreparedPool:
    """Parse and chunk each document of the pool in the worker's parse workers (time and memory limits apply), then
    embed all their chunks in one call with the model the worker loaded once. Documents that fail come back with their
    reason; nothing here writes to Qdrant (the flow does). Not retried: a document's failure is its outcome, and a
    worker that dies under the task has it run again by Dask on another worker."""
    from docingest.core.dask_worker import worker_model, worker_options

    return prepare_and_embed(source, items, profile, worker_options(options), worker_model(model))
