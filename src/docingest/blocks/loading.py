"""Load a saved block by ``NAME`` or ``<block-type-slug>/NAME``, with a one-line error when it is not there."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block

from docingest.exceptions import ConfigurationError

B = TypeVar("B", bound=Block)


def load_block(name: str, kind: type[B]) -> B:
    """The saved block ``name`` of type ``kind`` (a bare name is looked up among ``kind``'s documents)."""
    slug = name if "/" in name else f"{kind.get_block_type_slug()}/{name}"
    try:
        block = Block.load(slug)
    except ValueError:
        raise ConfigurationError(f"no {kind.get_block_type_name()} block named {name!r}") from None
    if not isinstance(block, kind):
        raise ConfigurationError(f"block {name!r} is a {type(block).__name__}, not a {kind.__name__}")
    return block
