"""The stage tasks of one run, as that run submits them: with its result storage (the parse cache) and, where no
concurrency limit can apply to them, without their tags (see ``docingest.flows.locks.stage_limits_apply``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from docingest.tasks.cluster import prepare_and_embed_task
from docingest.tasks.embed import embed_pool_task
from docingest.tasks.prepare import prepare_document_task, prepare_documents_task
from docingest.tasks.store import (
    delete_documents_task,
    ensure_collection_task,
    finalize_documents_task,
    maintain_collection_task,
    sparse_vectors_task,
    write_pool_task,
)


@dataclass(frozen=True)
class Stages:
    """A run's task for each stage; the defaults are the module-level tasks themselves."""

    prepare: Any = prepare_document_task
    prepare_batch: Any = prepare_documents_task
    embed: Any = embed_pool_task
    prepare_embed: Any = prepare_and_embed_task  # on a Dask cluster: parse, chunk and embed a pool of documents
    write: Any = write_pool_task
    finalize: Any = finalize_documents_task
    ensure: Any = ensure_collection_task
    sparse: Any = sparse_vectors_task
    delete: Any = delete_documents_task
    maintain: Any = maintain_collection_task


def stages_for_run(result_storage: Any = None, tagged: bool = True) -> Stages:
    """The run's stage tasks: the parse tasks persist to ``result_storage`` when one is given; ``tagged=False`` drops
    every task's tags, so its runs make no concurrency-slot calls to the API."""
    stages = Stages()
    if result_storage is None and tagged:
        return stages
    fields: dict[str, Any] = {}
    for name, task in vars(stages).items():
        if result_storage is not None and name in ("prepare", "prepare_batch"):
            task = task.with_options(result_storage=result_storage)
        if not tagged:
            task = task.with_options()
            task.tags = set()  # with_options(tags=...) cannot empty them: an empty set means "keep the task's"
        fields[name] = task
    return Stages(**fields)
