"""Embedding and writing one pool (core/write.py): the stage logic the writer runs as Prefect task runs."""

from __future__ import annotations

import numpy as np
import pytest

from docingest.core.embed import LoadedModel, ModelInfo
from docingest.core.plan import Profile
from docingest.core.write import EmbeddedPool, embed_pool, write_pool
from docingest.datamodel import (
    ChangeKind,
    Chunk,
    DocumentStatus,
    ManifestRecord,
    PreparedDocument,
    SourceDocument,
    Stage,
)
from docingest.exceptions import ConfigurationError, StoreError
from docingest.options import PdfMode

pytestmark = pytest.mark.unit

INFO = ModelInfo(name="fake", location="fake", revision="1", dimension=4, max_seq_length=128)
PROFILE = Profile(pdf_mode=PdfMode.FAST, ocr=False, max_tokens=128, model=INFO, fingerprint="fp")


class FakeEncoder:
    """Encodes a text to [len, 1, 0, 0] (normalised); a text holding POISON breaks the call, as a bad input can."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.error = error

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        if self.error is not None:
            raise self.error
        if any("POISON" in t for t in texts):
            raise RuntimeError("index out of range in self")
        vectors = np.array([[len(t), 1.0, 0.0, 0.0] for t in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def doc(name: str, *texts: str) -> PreparedDocument:
    chunks = [Chunk(chunk_index=i, text=t, embed_text=t) for i, t in enumerate(texts)]
    return PreparedDocument(document=SourceDocument(source_uri="file:///src", path=name, uri=f"file:///src/{name}",
                                                    size=1, content_hash=name * 8),
                            change=ChangeKind.NEW, status=DocumentStatus.SUCCESS, chunks=chunks)


def test_a_pool_is_encoded_in_one_call_and_split_back_per_document():
    encoder = FakeEncoder()
    docs = [doc("a.md", "one", "three"), doc("b.md", "seventeen")]
    pool = embed_pool(LoadedModel(INFO, encoder), docs, 32)
    assert encoder.calls == [["one", "three", "seventeen"]]  # one call across documents
    assert [d.document.path for d in pool.docs] == ["a.md", "b.md"] and pool.failed == []
    assert [len(v) for v in pool.vectors] == [2, 1] and pool.chunks == 3 and pool.seconds >= 0
    assert np.allclose(pool.vectors[1][0], encoder.encode(["seventeen"])[0])


def test_the_document_that_breaks_a_pool_is_set_apart_alone():
    encoder = FakeEncoder()
    docs = [doc("a.md", "fine"), doc("bad.md", "POISON here"), doc("c.md", "also fine")]
    pool = embed_pool(LoadedModel(INFO, encoder), docs, 32)
    assert [d.document.path for d in pool.docs] == ["a.md", "c.md"]
    assert [(d.document.path, "index out of range" in e) for d, e in pool.failed] == [("bad.md", True)]
    assert len(encoder.calls) == 4  # the pool, then each document alone
    assert pool.chunks == 2


def test_a_model_that_cannot_be_used_stops_the_run():
    with pytest.raises(ConfigurationError):
        embed_pool(LoadedModel(INFO, FakeEncoder(ConfigurationError("wrong model"))), [doc("a.md", "x")], 32)


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.upserted, self.replaced, self.records = fail, [], [], []

    def upsert(self, collection, points, batch_size):
        if self.fail:
            raise StoreError("Qdrant at test: 503")
        self.upserted += points
        return len(points)

    def delete_other_versions_many(self, collection, replace):
        self.replaced += replace
        return 5

    def write_manifest(self, collection, records):
        self.records += records

    def delete_manifest(self, collection, doc_ids):
        assert doc_ids == []


def test_writing_a_pool_upserts_then_records_successes_and_the_set_apart_failures():
    a, bad = doc("a.md", "one", "two"), doc("bad.md", "POISON")
    pool = EmbeddedPool(docs=[a], vectors=[np.ones((2, 4), dtype=np.float32)], failed=[(bad, "EmbedError: nope")])
    previous = ManifestRecord(doc_id="x", source_uri="file:///src", path="bad.md", uri="file:///src/bad.md",
                              content_hash="h", fingerprint="fp", version="v", status=DocumentStatus.FAILURE,
                              stage=Stage.EMBED, attempts=2)
    store = FakeStore()
    written = write_pool(store, "c__v1", pool, PROFILE, {"bad.md": previous}, 64)
    assert (written.upserted, written.deleted) == (2, 5)
    assert {p["payload"]["path"] for p in store.upserted} == {"a.md"}
    assert len(store.replaced) == 1  # only the written document's old versions go; the failed one keeps its own
    by_path = {r.path: r for r in store.records}
    assert by_path["a.md"].status is DocumentStatus.SUCCESS and by_path["a.md"].chunks == 2
    assert by_path["bad.md"].status is DocumentStatus.FAILURE and by_path["bad.md"].stage is Stage.EMBED
    assert by_path["bad.md"].attempts == 3


def test_a_store_error_is_raised_before_anything_is_recorded():
    pool = EmbeddedPool(docs=[doc("a.md", "one")], vectors=[np.ones((1, 4), dtype=np.float32)])
    store = FakeStore(fail=True)
    with pytest.raises(StoreError):
        write_pool(store, "c__v1", pool, PROFILE, {}, 64)
    assert store.records == [] and store.replaced == []


def test_before_its_last_attempt_a_failing_pool_is_raised_whole_for_a_retry():
    """The embed task retries a failing pool as a whole (the error may go away); only its last attempt isolates."""
    from docingest.exceptions import EmbedError

    encoder = FakeEncoder()
    with pytest.raises(EmbedError, match="index out of range"):
        embed_pool(LoadedModel(INFO, encoder), [doc("a.md", "fine"), doc("bad.md", "POISON")], 32, isolate=False)
    assert len(encoder.calls) == 1


def test_the_window_takes_whichever_parse_finishes_first_not_the_oldest(monkeypatch):
    """A document that parses for minutes holds no other document: the window hands finished runs over first."""
    from collections import deque
    from concurrent.futures import Future

    from docingest.flows import window as window_module

    class FakeFuture:
        def __init__(self, name: str, done: bool) -> None:
            self.name, self.wrapped_future = name, Future()
            if done:
                self.wrapped_future.set_result(name)

        def wait(self, timeout=None):
            self.wrapped_future.exception(timeout) if self.wrapped_future.done() else None

    taken, flushes = [], []
    monkeypatch.setattr(window_module, "take", lambda future, *a: taken.append(future.name))
    monkeypatch.setattr(window_module, "IDLE_S", 0.01)

    class Writer:
        def maybe_flush(self, idle=False):
            flushes.append(idle)
            if len(flushes) == 3:
                slow.wrapped_future.set_result("slow")  # the slow one finishes at last

    slow, fast, faster = FakeFuture("slow", False), FakeFuture("fast", True), FakeFuture("faster", True)
    window = deque([(slow, 1), (fast, 2), (faster, 3)])
    got = [window_module.take_first(window, Writer(), None, None) for _ in range(3)]
    assert taken == ["fast", "faster", "slow"] and got == [2, 3, 1]
    assert flushes == [True, True, True]  # while only the slow one was left, the encoder took what was pending
