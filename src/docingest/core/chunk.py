"""Chunk: DoclingDocument -> chunks sized for the embedding model, with Docling's HybridChunker."""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from docingest.core.embed import LoadedModel
from docingest.datamodel import Chunk
from docingest.exceptions import ChunkError
from docingest.options import ChunkOptions

if TYPE_CHECKING:
    from docling_core.transforms.chunker import DocChunk
    from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
    from docling_core.transforms.chunker.tokenizer.base import BaseTokenizer
    from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer
    from docling_core.transforms.serializer.base import BaseDocSerializer
    from docling_core.types.doc import DoclingDocument
    from transformers import PreTrainedTokenizerBase

    from docingest.plugins import PluginInfo

_local = threading.local()


def effective_max_tokens(options: ChunkOptions, model_max_seq_length: int) -> int:
    """The chunk size in tokens: the option if set, never above what the model reads."""
    if options.max_tokens is None:
        return model_max_seq_length
    return min(options.max_tokens, model_max_seq_length)


COUNT_CACHE_SIZE = 4096  # texts whose token counts a chunker's tokenizer keeps (emptied when full)


def _remembered_count(counts: dict[str, int], text: str, count_tokens: Callable[[str], int]) -> int:
    """``count_tokens(text)``, remembered in ``counts``, which holds at most COUNT_CACHE_SIZE texts."""
    if (count := counts.get(text)) is None:
        if len(counts) >= COUNT_CACHE_SIZE:
            counts.clear()
        count = counts[text] = count_tokens(text)
    return count


@functools.cache
def _counting_tokenizer_class() -> type[HuggingFaceTokenizer]:
    """Docling's HuggingFaceTokenizer, remembering the token counts it gave: HybridChunker counts the same texts
    again and again while it splits and merges (5,196 counts of 2,485 distinct texts on 200 generated documents),
    and each count runs the tokenizer."""
    from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer
    from pydantic import PrivateAttr

    class CountCachingTokenizer(HuggingFaceTokenizer):
        _counts: dict[str, int] = PrivateAttr(default_factory=dict)

        def count_tokens(self, text: str) -> int:
            return _remembered_count(self._counts, text, super().count_tokens)

    return CountCachingTokenizer


def model_tokenizer(tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> HuggingFaceTokenizer:
    """The chunker's tokenizer: the embedding model's own (a transformers tokenizer), counting at most
    ``max_tokens`` per chunk. Not thread-safe: one per thread or process."""
    return _counting_tokenizer_class()(tokenizer=tokenizer, max_tokens=max_tokens)


def make_chunker(loaded: LoadedModel, options: ChunkOptions) -> HybridChunker | PluginChunker:
    """A HybridChunker using the embedding model's own tokenizer, one per thread (tokenizers are not thread-safe)."""
    max_tokens = effective_max_tokens(options, loaded.info.max_seq_length)
    key = (loaded.info.location, max_tokens, options.merge_peers, options.chunker)
    cache = _local.__dict__.setdefault("chunkers", {})
    if key not in cache:
        with loaded.lock:  # copy while no encode is using it
            own_tokenizer = copy.deepcopy(loaded.model.tokenizer)
        cache[key] = build_chunker(model_tokenizer(own_tokenizer, max_tokens), options)
    return cache[key]


def build_chunker(tokenizer: BaseTokenizer, options: ChunkOptions) -> HybridChunker | PluginChunker:
    """Docling's HybridChunker on the model's tokenizer, or the chosen chunker plugin (PluginError if broken)."""
    if options.chunker:
        from docingest.plugins import get

        return PluginChunker(get("chunker", options.chunker), tokenizer)
    return _hybrid_chunker_class()(tokenizer=tokenizer, merge_peers=options.merge_peers)


@functools.cache
def _hybrid_chunker_class() -> type[HybridChunker]:
    """Docling's HybridChunker, splitting oversized text with one semchunk chunker per token budget.

    HybridChunker builds a new ``semchunk.chunkerify`` for every chunk it splits: each reads the tokenizer's whole
    vocabulary (30,522 tokens for all-MiniLM-L6-v2) to find its longest token, ~40 ms, and registers a token-count
    cache in a module-level dict of semchunk's that is never emptied, holding the split texts for the life of the
    process. Here the longest token is found once per tokenizer, the token counts live in a bounded cache, and
    semchunk memoizes nothing. Same counter (``encode`` without special tokens), same chunks. A chunk holding one
    table keeps Docling's own path (header repetition)."""
    from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
    from docling_core.types.doc import TableItem
    from pydantic import PrivateAttr

    class SegmentingHybridChunker(HybridChunker):
        _counts: dict[str, int] = PrivateAttr(default_factory=dict)
        _max_token_chars: int | None = PrivateAttr(default=None)

        def segment(self, doc_chunk: DocChunk, available_length: int, doc_serializer: BaseDocSerializer) -> list[str]:
            items = doc_chunk.meta.doc_items
            tokenizer = self.tokenizer.get_tokenizer()
            if (len(items) == 1 and isinstance(items[0], TableItem)) or not hasattr(tokenizer, "get_vocab"):
                return super().segment(doc_chunk, available_length, doc_serializer)
            import semchunk

            if self._max_token_chars is None:
                self._max_token_chars = max(len(token) for token in tokenizer.get_vocab())
            chunker = semchunk.chunkerify(self._count, chunk_size=available_length,
                                          max_token_chars=self._max_token_chars, memoize=False)
            return cast("list[str]", chunker(doc_chunk.text))  # one text in: its chunks' texts

        def _count(self, text: str) -> int:  # semchunk's own counter for a transformers tokenizer
            encode = self.tokenizer.get_tokenizer().encode
            return _remembered_count(self._counts, text, lambda t: len(encode(t, add_special_tokens=False)))

    return SegmentingHybridChunker


class PluginChunker:
    """A docingest.chunkers plugin behind the same call as HybridChunker; chunks longer than the model reads are
    a chunk error (they would be cut silently when embedded)."""

    def __init__(self, plugin: PluginInfo, tokenizer: BaseTokenizer) -> None:
        self.plugin, self.tokenizer = plugin, tokenizer

    def to_chunks(self, doc: DoclingDocument) -> list[Chunk]:
        max_tokens = self.tokenizer.get_max_tokens()
        produced = self.plugin.obj.chunk(doc, max_tokens, self.tokenizer.count_tokens)
        chunks: list[Chunk] = []
        for raw in produced:
            get = raw.get if isinstance(raw, dict) else lambda k, d=None, r=raw: getattr(r, k, d)
            text = str(get("text") or "").strip()
            if not text:
                continue
            headings = [str(h) for h in get("headings") or []]
            embed_text = str(get("embed_text") or "\n".join([*headings, text]))
            tokens = self.tokenizer.count_tokens(embed_text)
            if tokens > max_tokens:
                raise ChunkError(f"chunker plugin {self.plugin.entry_name!r} made a {tokens}-token chunk "
                                 f"(the model reads {max_tokens})")
            chunks.append(Chunk(chunk_index=len(chunks), text=text, embed_text=embed_text, headings=headings,
                                pages=[int(p) for p in get("pages") or []], token_count=tokens))
        return chunks


RESERVED_PAYLOAD = frozenset({
    "doc_id", "source_uri", "uri", "path", "content_hash", "version", "fingerprint", "chunk_index", "chunk_count",
    "headings", "pages", "text", "parser", "model", "model_backend", "ingested_at",
})


def enrich_chunks(chunks: list[Chunk], path: str, names: list[str]) -> list[Chunk]:
    """Run the enricher plugins in order; each returns one dict of payload fields per chunk (EnrichError if not)."""
    from docingest.exceptions import EnrichError
    from docingest.plugins import get

    for name in names:
        plugin = get("enricher", name)
        try:
            fields = list(plugin.obj.enrich(chunks, path))
        except Exception as exc:  # noqa: BLE001 - the plugin's failure is this document's failure, naming it
            raise EnrichError(f"enricher plugin {name!r} failed: {type(exc).__name__}: {exc}") from exc
        if len(fields) != len(chunks) or not all(isinstance(f, dict) for f in fields):
            raise EnrichError(f"enricher plugin {name!r} must return one dict per chunk "
                              f"({len(chunks)}), got {len(fields)} items")
        for chunk, extra in zip(chunks, fields, strict=True):
            if clash := RESERVED_PAYLOAD.intersection(extra):
                raise EnrichError(f"enricher plugin {name!r} may not set {', '.join(sorted(clash))}")
            chunk.extra.update(extra)
    return chunks


def chunk_document(doc: DoclingDocument, chunker: HybridChunker | PluginChunker) -> list[Chunk]:
    """Split a document into chunks; ``embed_text`` is the chunk text contextualized with its headings."""
    if isinstance(chunker, PluginChunker):
        try:
            return chunker.to_chunks(doc)
        except ChunkError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ChunkError(f"chunker plugin {chunker.plugin.entry_name!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        chunks: list[Chunk] = []
        for raw in chunker.chunk(dl_doc=doc):
            text = raw.text.strip()
            if not text:
                continue
            embed_text = chunker.contextualize(chunk=raw)
            pages = sorted(
                {prov.page_no for item in cast(Any, raw.meta).doc_items for prov in getattr(item, "prov", []) or []}
            )
            chunks.append(
                Chunk(
                    chunk_index=len(chunks),
                    text=text,
                    embed_text=embed_text,
                    headings=list(cast(Any, raw.meta).headings or []),  # a DocMeta: HybridChunker's chunks
                    pages=pages,
                    token_count=chunker.tokenizer.count_tokens(embed_text),
                )
            )
        return chunks
    except Exception as exc:  # noqa: BLE001
        raise ChunkError(f"{type(exc).__name__}: {exc}") from exc
