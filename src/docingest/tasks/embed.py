"""Embed a pool of prepared documents, across documents."""

from __future__ import annotations

from docingest.core.embed import LoadedModel
from docingest.core.write import EmbeddedPool, embed_pool
from docingest.datamodel import PreparedDocument
from docingest.tasks.common import EMBED_TAGS, count, stage_task


@stage_task("embed", lambda p: f"embed {count(sum(len(d.chunks) for d in p['docs']), 'chunk')} of "
                               f"{count(len(p['docs']), 'document')}", EMBED_TAGS, retries=2)
def embed_pool_task(model: LoadedModel, docs: list[PreparedDocument], batch_size: int) -> EmbeddedPool:
    """Encode the chunks of several documents in one call; a document the model cannot encode is set apart."""
    return embed_pool(model, docs, batch_size)
