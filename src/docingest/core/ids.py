"""Deterministic identifiers. Never uuid4, never positions alone: ids come from what a thing is."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

# Fixed namespace for every docingest id (uuid5 of the DNS namespace and our name), never change it.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "docingest.dev")


def document_id(source_uri: str, path: str) -> str:
    """UUIDv5 of a document: stable across runs and content changes."""
    return str(uuid.uuid5(NAMESPACE, f"{source_uri}\n{path}"))


def document_version(content_hash: str, fingerprint: str) -> str:
    """Version of a document's indexed form: changes when its bytes or the output-shaping settings change."""
    return hashlib.sha256(f"{content_hash}\n{fingerprint}".encode()).hexdigest()[:16]


def point_id(doc_id: str, version: str, chunk_index: int) -> str:
    """UUIDv5 of one chunk of one version of a document.

    The same document, content and settings always give the same ids (re-runs overwrite), and a new version
    gets new ids, so it can be written in full before the old version is removed.
    """
    return str(uuid.uuid5(NAMESPACE, f"{doc_id}\n{version}\n{chunk_index}"))


def sha256_file(path: str | Path, block_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in blocks (never whole into memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(block_size):
            h.update(block)
    return h.hexdigest()


def fingerprint(parts: dict) -> str:
    """Short stable hash of the settings that shape a document's chunks and vectors."""
    import json

    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
