"""Embed a batch of chunk texts, across documents."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from docingest.core.embed import LoadedModel, embed_texts
from docingest.tasks.common import EMBED_TAGS, RETRY_DELAYS, count, retry_transient, run_name


@task(
    name="embed",
    task_run_name=run_name(lambda p: f"embed {count(len(p['texts']), 'chunk')} of {count(p['n_docs'], 'document')}"),
    tags=EMBED_TAGS,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
)
def embed_batch_task(model: LoadedModel, texts: list[str], batch_size: int, n_docs: int = 0):
    """Encode the texts of several documents in one call (the model sorts by length inside)."""
    return embed_texts(model, texts, batch_size)
