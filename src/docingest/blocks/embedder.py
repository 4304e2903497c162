"""Embedder settings block: which sentence-transformers model, on which device, with which batch size."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from docingest.blocks.qdrant import DOCS


class EmbedderSettings(Block):
    """Embedding model settings shared by deployments and workers.

    Example:
        ```python
        from docingest.blocks import EmbedderSettings

        embedder = EmbedderSettings.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Docingest Embedder Settings"
    _block_type_slug = "docingest-embedder-settings"
    _logo_url = "https://huggingface.co/front/assets/huggingface_logo-noborder.svg"  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]

    model: str = Field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        description="sentence-transformers model name or local path; the default is bundled and loads offline.",
    )
    device: str | None = Field(default=None, description="Torch device (cpu, cuda, mps); empty for automatic.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Chunks per encode call.")
