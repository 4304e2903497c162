"""The chunker remembers token counts and splits oversized text with one semchunk chunker per budget: the same chunks
as Docling's own HybridChunker and tokenizer, fewer tokenizer calls, nothing left behind in semchunk."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def hf_tokenizer_location():
    from docingest.core.embed import resolve_model_location

    return resolve_model_location("all-minilm-l6-v2")[0]


def _counting(tokenizer):
    """Count the calls reaching the transformers tokenizer (the work a cached count saves)."""
    calls = []
    tokenize = tokenizer.tokenize

    def counted(*args, **kwargs):
        calls.append(kwargs.get("text", args[0] if args else None))
        return tokenize(*args, **kwargs)

    tokenizer.tokenize = counted
    return calls


def _document():
    from docling_core.types.doc import DocItemLabel, DoclingDocument

    doc = DoclingDocument(name="handbook")
    doc.add_heading("Operations handbook", level=1)
    for section in range(3):
        doc.add_heading(f"Section {section}: rotation and backups", level=2)
        for para in range(4):
            words = " ".join(f"word{section}{para}{i} rotates the signing keys every ninety days" for i in range(12))
            doc.add_text(label=DocItemLabel.PARAGRAPH, text=f"Paragraph {para}. {words}.")
        doc.add_text(label=DocItemLabel.PARAGRAPH, text="A short note.")
    return doc


def test_same_chunks_and_counts_as_doclings_tokenizer_with_fewer_tokenizer_calls(hf_tokenizer_location):
    from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
    from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer
    from transformers import AutoTokenizer

    from docingest.core.chunk import build_chunker, chunk_document, model_tokenizer
    from docingest.options import ChunkOptions

    plain_hf, cached_hf = (AutoTokenizer.from_pretrained(hf_tokenizer_location) for _ in range(2))
    plain_calls, cached_calls = _counting(plain_hf), _counting(cached_hf)
    plain = HybridChunker(tokenizer=HuggingFaceTokenizer(tokenizer=plain_hf, max_tokens=64),
                          merge_peers=ChunkOptions().merge_peers)  # Docling's own, as it comes
    cached = build_chunker(model_tokenizer(cached_hf, 64), ChunkOptions())

    doc = _document()
    expected, got = chunk_document(doc, plain), chunk_document(doc, cached)
    assert len(expected) > 6  # the long paragraphs were split
    assert [(c.text, c.embed_text, c.token_count, c.headings) for c in got] == \
        [(c.text, c.embed_text, c.token_count, c.headings) for c in expected]
    assert len(cached_calls) == len(set(cached_calls)) < len(plain_calls)  # each distinct text tokenized once


def test_the_count_cache_is_bounded(monkeypatch, hf_tokenizer_location):
    from transformers import AutoTokenizer

    from docingest.core import chunk

    monkeypatch.setattr(chunk, "COUNT_CACHE_SIZE", 3)
    hf = AutoTokenizer.from_pretrained(hf_tokenizer_location)
    calls = _counting(hf)
    tokenizer = chunk.model_tokenizer(hf, 64)
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    assert [tokenizer.count_tokens(t) for t in texts * 2] == [len(hf.tokenize(t)) for t in texts] * 2
    calls.clear()
    tokenizer.count_tokens("eta")  # the fourth text: the cache was full, so it starts again
    tokenizer.count_tokens("alpha beta")
    assert calls == ["eta", "alpha beta"]


def _table_document():
    from docling_core.types.doc import DocItemLabel, TableCell, TableData

    doc = _document()
    cells = [TableCell(text=f"row {r} column {c} holds the rotation date of key {r * 4 + c}", start_row_offset_idx=r,
                       end_row_offset_idx=r + 1, start_col_offset_idx=c, end_col_offset_idx=c + 1,
                       column_header=r == 0) for r in range(24) for c in range(4)]
    doc.add_table(data=TableData(num_rows=24, num_cols=4, table_cells=cells))
    doc.add_text(label=DocItemLabel.PARAGRAPH, text=" ".join(f"closing remark {i} on retention" for i in range(80)))
    return doc


def test_oversized_text_splits_as_doclings_without_growing_semchunks_memo(hf_tokenizer_location):
    """Long paragraphs and a table too long for one chunk: the same chunks as Docling's HybridChunker (the table through
    Docling's own header-repeating path), while semchunk's module-level memo of token counters does not grow (Docling's
    chunker adds one entry, with the texts it counted, for every chunk it splits)."""
    from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
    from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer
    from semchunk import semchunk
    from transformers import AutoTokenizer

    from docingest.core.chunk import build_chunker, chunk_document, model_tokenizer
    from docingest.options import ChunkOptions

    doc = _table_document()
    docling = HybridChunker(tokenizer=HuggingFaceTokenizer(tokenizer=AutoTokenizer.from_pretrained(
        hf_tokenizer_location), max_tokens=64), merge_peers=ChunkOptions().merge_peers)
    ours = build_chunker(model_tokenizer(AutoTokenizer.from_pretrained(hf_tokenizer_location), 64), ChunkOptions())
    before = len(semchunk._memoized_token_counters)
    expected = chunk_document(doc, docling)
    added_by_docling = len(semchunk._memoized_token_counters) - before
    got = chunk_document(doc, ours)
    assert added_by_docling > 5 and len(semchunk._memoized_token_counters) == before + added_by_docling
    assert [(c.text, c.embed_text, c.token_count) for c in got] == [(c.text, c.embed_text, c.token_count)
                                                                     for c in expected]
    assert sum("rotation date of key" in c.text for c in got) > 3  # the table was split (Docling's table path)
    assert all(c.token_count <= 64 for c in got)
