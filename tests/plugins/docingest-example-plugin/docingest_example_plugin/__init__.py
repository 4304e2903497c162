"""A minimal docingest plugin package (used by the test suite; a template for your own).

.note files look like::

    Title: Rotating the API keys
    Tags: security, operations

    First paragraph...

    Second paragraph...
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path

# The tests bump this to check that a new plugin version re-processes what the plugin touched.
VERSION = os.environ.get("DOCINGEST_EXAMPLE_PLUGIN_VERSION", "0.1.0")
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "how", "i", "in", "is", "it", "of",
    "on", "or", "that", "the", "this", "to", "was", "we", "what", "when", "which", "with", "you", "your",
})


class NotesParser:
    """Parses .note files into Markdown (title as heading, tags as a line, paragraphs as they are)."""

    name = "notes"
    version = VERSION
    capabilities = ["parse"]
    formats = ["note"]

    def parse(self, path: Path, options) -> str:
        text = path.read_text(encoding="utf-8")
        header, _, body = text.partition("\n\n")
        fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
        if "Title" not in fields:
            raise ValueError("a .note file starts with a 'Title:' line")
        lines = [f"# {fields['Title'].strip()}", ""]
        if tags := fields.get("Tags", "").strip():
            lines += [f"Tags: {tags}", ""]
        return "\n".join(lines) + body


class ParagraphChunker:
    """One chunk per paragraph, under the document's title."""

    name = "paragraphs"
    version = VERSION
    capabilities = ["chunk"]

    def chunk(self, document, max_tokens: int, count_tokens) -> list[dict]:
        from docling_core.types.doc import DocItemLabel

        chunks, heading = [], []
        for item, _level in document.iterate_items():
            label = getattr(item, "label", None)
            if label in (DocItemLabel.TITLE, DocItemLabel.SECTION_HEADER):
                heading = [item.text]
            elif getattr(item, "text", "").strip():
                chunks.append({"text": item.text, "headings": heading})
        return chunks


class KeywordEnricher:
    """Adds ``keywords`` (the 5 most frequent non-stopwords) and ``word_count`` to every chunk."""

    name = "keywords"
    version = VERSION
    capabilities = ["enrich"]

    def enrich(self, chunks, path: str) -> list[dict]:
        out = []
        for chunk in chunks:
            words = [w for w in re.findall(r"[a-z]{3,}", chunk.text.lower()) if w not in STOPWORDS]
            out.append({"keywords": [w for w, _ in Counter(words).most_common(5)], "word_count": len(words)})
        return out


class HashingEmbedder:
    """A tiny deterministic embedder (hashing trick over words): no model, for tests and examples."""

    name = "hashing"
    version = VERSION
    capabilities = ["embed"]
    dimension = 64
    max_seq_length = 128
    tokenizer = None  # None: chunk sizes are counted with docingest's bundled model tokenizer

    def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = []
        for text in texts:
            v = [0.0] * self.dimension
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big")
                v[h % self.dimension] += 1.0 if h & 1 << 31 else -1.0
            vectors.append(v)
        return vectors
