import uuid

import pytest

from docingest.core.ids import document_id, document_version, fingerprint, point_id, sha256_file

pytestmark = pytest.mark.unit


def test_point_ids_are_valid_uuid5_and_deterministic():
    doc = document_id("file:///data/docs", "a/b.pdf")
    version = document_version("ab" * 32, "f1")
    first = point_id(doc, version, 0)
    assert uuid.UUID(first).version == 5  # Qdrant accepts UUIDs; no sha256 hex or arbitrary strings
    assert point_id(doc, version, 0) == first
    assert document_id("file:///data/docs", "a/b.pdf") == doc


def test_ids_change_with_what_they_identify():
    doc = document_id("file:///data/docs", "a/b.pdf")
    v1 = document_version("11" * 32, "f1")
    assert document_id("file:///data/other", "a/b.pdf") != doc  # same path in another source
    assert document_id("file:///data/docs", "a/c.pdf") != doc
    assert document_version("22" * 32, "f1") != v1  # content edit -> new version
    assert document_version("11" * 32, "f2") != v1  # settings change -> new version
    ids = {point_id(doc, v1, i) for i in range(100)}
    assert len(ids) == 100
    assert point_id(doc, v1, 0) != point_id(doc, document_version("22" * 32, "f1"), 0)


def test_fingerprint_is_order_independent_and_sensitive():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_sha256_file_streams(tmp_path):
    import hashlib

    data = b"x" * (3 * (1 << 20) + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path, block_size=1 << 16) == hashlib.sha256(data).hexdigest()
