"""Chunk: DoclingDocument -> chunks sized for the embedding model, with Docling's HybridChunker."""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING

from docingest.core.embed import LoadedModel
from docingest.datamodel import Chunk
from docingest.exceptions import ChunkError
from docingest.options import ChunkOptions

if TYPE_CHECKING:
    from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
    from docling_core.types.doc import DoclingDocument

_local = threading.local()


def effective_max_tokens(options: ChunkOptions, model_max_seq_length: int) -> int:
    """The chunk size in tokens: the option if set, never above what the model reads."""
    if options.max_tokens is None:
        return model_max_seq_length
    return min(options.max_tokens, model_max_seq_length)


def make_chunker(loaded: LoadedModel, options: ChunkOptions) -> HybridChunker:
    """A HybridChunker using the embedding model's own tokenizer, one per thread (tokenizers are not thread-safe)."""
    from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
    from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer

    max_tokens = effective_max_tokens(options, loaded.info.max_seq_length)
    key = (loaded.info.location, max_tokens, options.merge_peers)
    cache = _local.__dict__.setdefault("chunkers", {})
    if key not in cache:
        with loaded.lock:  # copy while no encode is using it
            own_tokenizer = copy.deepcopy(loaded.model.tokenizer)
        tokenizer = HuggingFaceTokenizer(tokenizer=own_tokenizer, max_tokens=max_tokens)
        cache[key] = HybridChunker(tokenizer=tokenizer, merge_peers=options.merge_peers)
    return cache[key]


def chunk_document(doc: DoclingDocument, chunker: HybridChunker) -> list[Chunk]:
    """Split a document into chunks; ``embed_text`` is the chunk text contextualized with its headings."""
    try:
        chunks: list[Chunk] = []
        for raw in chunker.chunk(dl_doc=doc):
            text = raw.text.strip()
            if not text:
                continue
            embed_text = chunker.contextualize(chunk=raw)
            pages = sorted(
                {prov.page_no for item in raw.meta.doc_items for prov in getattr(item, "prov", []) or []}
            )
            chunks.append(
                Chunk(
                    chunk_index=len(chunks),
                    text=text,
                    embed_text=embed_text,
                    headings=list(raw.meta.headings or []),
                    pages=pages,
                    token_count=chunker.tokenizer.count_tokens(embed_text),
                )
            )
        return chunks
    except Exception as exc:  # noqa: BLE001
        raise ChunkError(f"{type(exc).__name__}: {exc}") from exc
