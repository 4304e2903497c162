"""Embed a pool of prepared documents, across documents."""

from __future__ import annotations

from docingest.core.embed import LoadedModel
from docingest.core.write import EmbeddedPool, embed_pool
from docingest.datamodel import PreparedDocument
from docingest.tasks.common import EMBED_TAGS, count, stage_task

RETRIES = 2  # an encode error may go away (a remote embedder, memory): the pool is tried 3 times


@stage_task("embed", lambda p: f"embed {count(sum(len(d.chunks) for d in p['docs']), 'chunk')} of "
                               f"{count(len(p['docs']), 'document')}", EMBED_TAGS, retries=RETRIES)
def embed_pool_task(model: LoadedModel, docs: list[PreparedDocument], batch_size: int) -> EmbeddedPool:
    """Encode the chunks of several documents in one call. A failing call is retried (with backoff) as a whole; on
    the last attempt each document is encoded alone, and the one the model cannot encode is set apart."""
    from prefect.runtime import task_run

    return embed_pool(model, docs, batch_size, isolate=task_run.run_count > RETRIES)
