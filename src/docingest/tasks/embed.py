"""Embed a batch of chunk texts, across documents."""

from __future__ import annotations

from docingest.core.embed import LoadedModel, embed_texts
from docingest.tasks.common import EMBED_TAGS, count, stage_task


@stage_task("embed", lambda p: f"embed {count(len(p['texts']), 'chunk')} of {count(p['n_docs'], 'document')}",
            EMBED_TAGS, retries=2)
def embed_batch_task(model: LoadedModel, texts: list[str], batch_size: int, n_docs: int = 0):
    """Encode the texts of several documents in one call (the model sorts by length inside)."""
    return embed_texts(model, texts, batch_size)
