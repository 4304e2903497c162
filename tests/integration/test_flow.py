"""The real flow: Prefect test server, Docling, the bundled model and Qdrant local mode."""

from __future__ import annotations

import shutil

import pytest

from docingest.core.store import QdrantStore
from docingest.datamodel import DocumentStatus
from docingest.flows.ingest import ingest_documents
from docingest.options import IngestOptions
from docingest.retrieval import search
from docingest.targets import QdrantTarget

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One or more documents of every format that converts offline.
SLICE = [
    "md/sources/duck.md",
    "md/sources/mixed.md",
    "docx/sources/lorem_ipsum.docx",
    "docx/sources/word_tables.docx",
    "pptx/sources/powerpoint_sample.pptx",
    "xlsx/sources/xlsx_05_table_with_title.xlsx",
    "html/sources/wiki_duck.html",
    "asciidoc/sources/asciidoc_02.asciidoc",
    "csv/sources/csv-comma.csv",
    "jats/sources/pone.0234687.nxml",
    "uspto/sources/pg06442728.xml",
    "latex/sources/example_01.tex",
    "webvtt/sources/webvtt_example_01.vtt",
    "odf/sources/text_document_01.odt",
    "pdf/sources/multi_page.pdf",
    "pdf/sources/redp5110_sampled.pdf",
]


def all_points(store: QdrantStore, collection: str) -> dict[str, dict]:
    return {p["id"]: p["payload"] for p in store.points(collection)}


@pytest.fixture
def docs(tmp_path, corpus_copy):
    return corpus_copy(SLICE, tmp_path / "docs")


def test_ingest_every_offline_format_then_search_finds_the_right_document(prefect_server, home, docs, written_store):
    result = ingest_documents(source=str(docs), collection="corpus")

    assert result.documents.seen == len(SLICE)
    assert result.documents.failed == 0, result.failures
    assert result.documents.new == len(SLICE) and result.documents.skipped == 0
    assert result.chunks.embedded == result.chunks.upserted > len(SLICE)
    assert result.flow_run_id
    assert all(o.status is DocumentStatus.SUCCESS and o.chunks > 0 for o in result.outcomes)
    # Pages: a PDF's own page count; none for formats without pages; the run's total is their sum.
    import pypdfium2

    pages = {o.path: o.pages for o in result.outcomes}
    assert pages["multi_page.pdf"] == len(pypdfium2.PdfDocument(docs / "multi_page.pdf")) > 1
    assert pages["redp5110_sampled.pdf"] == len(pypdfium2.PdfDocument(docs / "redp5110_sampled.pdf"))
    assert pages["duck.md"] == pages["wiki_duck.html"] == pages["csv-comma.csv"] == 0
    assert result.pages == sum(pages.values()) and result.to_json_dict()["pages"] == result.pages

    store = written_store()
    points = all_points(store, "corpus")
    assert len(points) == result.chunks.upserted
    payload = next(iter(points.values()))
    assert {"source_uri", "uri", "path", "doc_id", "content_hash", "version", "chunk_index", "headings", "pages",
            "text", "parser", "model"} <= set(payload)
    pdf_payloads = [p for p in points.values() if p["path"] == "redp5110_sampled.pdf"]
    assert pdf_payloads and all(p["pages"] for p in pdf_payloads)
    assert {p["parser"] for p in pdf_payloads} == {"docling-fast"}

    expectations = {
        "ducks are water birds of the family Anatidae": "wiki_duck.html",
        "the evolution of the word processor": "multi_page.pdf",
        "row and column access control in DB2 for i": "redp5110_sampled.pdf",
        "turbo code decoding methods": "pg06442728.xml",
    }
    for query, expected in expectations.items():
        hits = search(query, "corpus", limit=3)  # hybrid, the default: fused ranks, scores ~1/60
        assert hits.mode == "hybrid" and hits[0].path == expected, (query, [h.path for h in hits])
        dense = search(query, "corpus", limit=3, mode="dense")
        assert dense[0].path == expected and dense[0].score > 0.3, (query, [(h.path, h.score) for h in dense])


def test_rerun_embeds_nothing_and_keeps_identical_points(prefect_server, home, docs, written_store):
    first = ingest_documents(source=str(docs), collection="rerun")
    before = all_points(written_store(), "rerun")

    second = ingest_documents(source=str(docs), collection="rerun")
    after = all_points(written_store(), "rerun")

    assert second.documents.unchanged == len(SLICE)
    assert second.documents.new == second.documents.changed == 0
    assert second.chunks.embedded == second.chunks.upserted == second.chunks.deleted == 0
    assert set(after) == set(before) and len(after) == first.chunks.upserted
    assert {k: v["text"] for k, v in after.items()} == {k: v["text"] for k, v in before.items()}
    # Runs leave no thread of their own behind (a notebook runs many): writer, embed, store, memory release.
    import threading

    assert not [t.name for t in threading.enumerate() if t.name.startswith("docingest-")]


def test_edit_replaces_the_old_version_without_stale_chunks(prefect_server, home, tmp_path, written_store):
    docs = tmp_path / "edit"
    docs.mkdir()
    (docs / "keys.md").write_text("# Key rotation\n\nRotate the signing keys every ninety days with the vault CLI.\n")
    (docs / "other.md").write_text("# Lunch\n\nThe cafeteria serves soup on Fridays.\n")
    ingest_documents(source=str(docs), collection="edit")

    (docs / "keys.md").write_text("# Key rotation\n\nKeys are now rotated automatically by the platform team.\n")
    result = ingest_documents(source=str(docs), collection="edit")

    assert (result.documents.changed, result.documents.unchanged) == (1, 1)
    assert result.chunks.deleted == 1 and result.chunks.upserted == 1
    texts = [p["text"] for p in all_points(written_store(), "edit").values()]
    assert not any("ninety days" in t for t in texts)  # the stale version is gone
    assert any("rotated automatically" in t for t in texts)
    assert len(texts) == 2


def test_settings_change_re_embeds(prefect_server, home, tmp_path, corpus_copy, written_store):
    few = SLICE[:4]
    docs = corpus_copy(few, tmp_path / "few")
    first = ingest_documents(source=str(docs), collection="settings")
    result = ingest_documents(source=str(docs), collection="settings",
                              options=IngestOptions.model_validate({"chunk": {"max_tokens": 64}}))
    assert result.documents.changed == len(few) and result.documents.unchanged == 0
    assert result.chunks.deleted == first.chunks.upserted
    assert result.chunks.upserted > first.chunks.upserted  # smaller chunks, more of them
    points = all_points(written_store(), "settings")
    assert len(points) == result.chunks.upserted  # old versions removed, nothing duplicated


def test_bad_inputs_fail_or_skip_per_document_and_never_stop_the_run(prefect_server, home, tmp_path, corpus, written_store):
    docs = tmp_path / "bad"
    docs.mkdir()
    (docs / "good.md").write_text("# Good\n\nThis document is perfectly fine and about penguins.\n")
    (docs / "corrupt.docx").write_bytes(b"PK\x03\x04 not a real office file")
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.4\n%%EOF garbage")
    (docs / "binary.html").write_bytes(bytes(range(256)) * 4)
    (docs / "empty.md").write_text("")
    (docs / "blob.bin").write_bytes(b"\x00\x01")
    shutil.copy2(corpus / "ocr/sources/qr_bill_example.jpg", docs / "scan.jpg")

    result = ingest_documents(source=str(docs), collection="bad",
                              options=IngestOptions.model_validate({"parse": {"ocr": "off"}}))

    failed = {f.source.rsplit("/", 1)[-1]: f for f in result.failures}
    assert set(failed) == {"corrupt.docx", "corrupt.pdf"}
    assert all(f.stage == "parse" and f.error for f in failed.values())
    skipped = {s.source.rsplit("/", 1)[-1]: s.reason for s in result.skipped}
    assert "unsupported file type" in skipped["blob.bin"]
    assert "empty document" in skipped["empty.md"]
    assert "OCR is off" in skipped["scan.jpg"]
    assert result.documents.seen == 7
    # Undecodable HTML either yields no text or some text, but never a crash of the run.
    paths = {p["path"] for p in all_points(written_store(), "bad").values()}
    assert "good.md" in paths
    assert not paths & {"corrupt.docx", "corrupt.pdf", "empty.md", "blob.bin"}  # nothing half-written

    # Failed documents are retried on the next run even though they did not change.
    again = ingest_documents(source=str(docs), collection="bad",
                             options=IngestOptions.model_validate({"parse": {"ocr": "off"}}))
    assert again.documents.changed == 2 and again.documents.failed == 2


def test_transient_qdrant_errors_are_retried(prefect_server, home, tmp_path, monkeypatch):
    from docingest.core import store as store_module
    from docingest.exceptions import StoreError

    docs = tmp_path / "retry"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nRetries make flaky networks bearable.\n")
    real_upsert = store_module.QdrantStore.upsert
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreError("Qdrant at test: upsert failed: 503 Service Unavailable")
        return real_upsert(self, *args, **kwargs)

    monkeypatch.setattr(store_module.QdrantStore, "upsert", flaky)
    result = ingest_documents(source=str(docs), collection="retry")
    assert calls["n"] == 2
    assert result.documents.failed == 0 and result.chunks.upserted == 1


def test_qdrant_target_parameter_overrides_settings(prefect_server, home, tmp_path):
    docs = tmp_path / "t"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nSomewhere else entirely.\n")
    elsewhere = tmp_path / "elsewhere"
    ingest_documents(source=str(docs), collection="t", qdrant=QdrantTarget(path=str(elsewhere)))
    assert (elsewhere / "collections" / "t__v1").is_dir()
    assert not (home / "qdrant").exists()


def test_failed_update_leaves_the_old_version_searchable(prefect_server, home, tmp_path, monkeypatch, task_states, written_store):
    from docingest.core import store as store_module
    from docingest.exceptions import StoreError

    docs = tmp_path / "safe"
    docs.mkdir()
    (docs / "policy.md").write_text("# Travel policy\n\nTrain travel is preferred for trips under five hours.\n")
    ingest_documents(source=str(docs), collection="safe")
    (docs / "policy.md").write_text("# Travel policy\n\nAll travel must now be booked through the portal.\n")

    def down(self, *args, **kwargs):
        raise StoreError("Qdrant at test: upsert failed: 503 Service Unavailable")

    monkeypatch.setattr(store_module.QdrantStore, "upsert", down)
    result = ingest_documents(source=str(docs), collection="safe")
    assert result.documents.failed == 1 and result.failures[0].stage == "upsert"
    texts = [p["text"] for p in all_points(written_store(), "safe").values()]
    assert texts and all("five hours" in t for t in texts)  # old version intact, nothing of the new one
    monkeypatch.undo()

    fixed = ingest_documents(source=str(docs), collection="safe")  # retried although unchanged since the failure
    assert fixed.documents.changed == 1 and fixed.documents.failed == 0
    # Parsed once: the retry reuses the persisted parse-and-chunk result (same content, settings and code).
    assert task_states(fixed.flow_run_id, "parse-and-chunk") == ["Cached"]
    assert "parse" not in fixed.stage_seconds and "read" not in fixed.stage_seconds  # no parse work done this run
    assert "parse" in result.stage_seconds  # the first run timed its parse work
    texts = [p["text"] for p in all_points(written_store(), "safe").values()]
    assert texts and all("portal" in t for t in texts)


def test_qdrant_connection_block_is_used_by_the_flow(prefect_server, home, tmp_path):
    from docingest.blocks import QdrantConnection

    docs = tmp_path / "blk"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nStored where the block says.\n")
    target = tmp_path / "block-qdrant"
    QdrantConnection(path=str(target)).save("test-local-qdrant", overwrite=True)
    result = ingest_documents(source=str(docs), collection="blk", qdrant_block="test-local-qdrant")
    assert result.chunks.upserted == 1
    assert (target / "collections" / "blk__v1").is_dir()


def test_embedder_settings_block(prefect_server, home, tmp_path, written_store):
    from docingest.blocks import EmbedderSettings

    docs = tmp_path / "emb"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nEmbedded with the model the block names.\n")
    EmbedderSettings(model="sentence-transformers/all-MiniLM-L6-v2", batch_size=8).save("minilm", overwrite=True)
    result = ingest_documents(source=str(docs), collection="emb", embedder_block="minilm")
    assert result.chunks.embedded == 1
    assert {p["model"] for p in all_points(written_store(), "emb").values()} == {"sentence-transformers/all-MiniLM-L6-v2"}


def test_document_that_becomes_empty_loses_its_old_chunks(prefect_server, home, tmp_path, task_states, written_store):
    docs = tmp_path / "empty"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nSoon to be emptied.\n")
    (docs / "b.md").write_text("# B\n\nStays.\n")
    ingest_documents(source=str(docs), collection="emptied")
    (docs / "a.md").write_text("")
    result = ingest_documents(source=str(docs), collection="emptied")
    assert result.documents.skipped == 1 and result.chunks.deleted == 1
    assert [p["path"] for p in all_points(written_store(), "emptied").values()] == ["b.md"]
    store = written_store()
    manifest = store.manifest("emptied", result.source)
    assert set(manifest) == {"a.md", "b.md"}  # a.md recorded as skipped, so the next run does not parse it again
    assert manifest["a.md"].status is DocumentStatus.SKIPPED and manifest["a.md"].chunks == 0
    again = ingest_documents(source=str(docs), collection="emptied")
    assert again.documents.unchanged == 2 and again.documents.skipped == 0
    assert task_states(again.flow_run_id, "parse-and-chunk") == []


def test_int8_backend_ingests_and_search_uses_the_same_backend(prefect_server, home, tmp_path, written_store):
    from docingest.core.embed import load_model

    docs = tmp_path / "q"
    docs.mkdir()
    (docs / "keys.md").write_text("# Keys\n\nRotate the signing keys every ninety days with the vault CLI.\n")
    (docs / "lunch.md").write_text("# Lunch\n\nThe cafeteria serves soup on Fridays.\n")
    opts = IngestOptions.model_validate({"embed": {"backend": "int8"}})
    result = ingest_documents(source=str(docs), collection="int8", options=opts)
    assert result.documents.new == 2
    points = all_points(written_store(), "int8")
    assert {p["model_backend"] for p in points.values()} == {"int8"}
    hit = search("how often are keys rotated", "int8", limit=1)[0]
    assert hit.path == "keys.md"
    int8 = load_model("sentence-transformers/all-MiniLM-L6-v2", None, "int8")
    assert int8.model is not load_model("sentence-transformers/all-MiniLM-L6-v2", None).model
    # A run that names no backend keeps the collection's (int8): nothing to do.
    assert ingest_documents(source=str(docs), collection="int8").documents.unchanged == 2
    torch = IngestOptions.model_validate({"embed": {"backend": "torch"}})
    again = ingest_documents(source=str(docs), collection="int8", options=torch)  # another fingerprint: re-embedded
    assert again.documents.changed == 2


def test_batched_task_runs_give_the_same_points_and_keep_failures_per_document(prefect_server, home, tmp_path, task_states, written_store):
    docs = tmp_path / "batched"
    docs.mkdir()
    for i in range(7):
        (docs / f"note{i}.md").write_text(f"# Note {i}\n\nThe greenhouse number {i} grows tomatoes and basil.\n")
    (docs / "corrupt.docx").write_bytes(b"PK\x03\x04 not a real office file")
    batched = IngestOptions(docs_per_task=3)

    result = ingest_documents(source=str(docs), collection="batched", options=batched)
    assert (result.documents.new, result.documents.failed, result.chunks.upserted) == (8, 1, 7)
    assert [f.source.rsplit("/", 1)[-1] for f in result.failures] == ["corrupt.docx"]
    states = sorted(task_states(result.flow_run_id, "parse-and-chunk-batch"))
    assert states == ["Completed", "Completed", "Failed"]  # 8 documents in 3 task runs; the failed one not cached
    single = ingest_documents(source=str(docs), collection="single", options=IngestOptions(docs_per_task=1))
    assert len(task_states(single.flow_run_id, "parse-and-chunk")) == 8

    store = written_store()
    strip = lambda points: {p["path"]: p["text"] for p in points.values()}  # noqa: E731
    assert strip(all_points(store, "batched")) == strip(all_points(store, "single"))  # same chunks either way

    # The failed document is retried alone; the batches that completed are cached results for the same documents.
    again = ingest_documents(source=str(docs), collection="batched-again", options=batched)
    assert sorted(task_states(again.flow_run_id, "parse-and-chunk-batch")) == ["Cached", "Cached", "Failed"]
    assert (again.documents.failed, again.chunks.upserted) == (1, 7)


def test_encoder_pools_are_bounded_in_order_and_a_bad_document_fails_alone(prefect_server, home, tmp_path,
                                                                          monkeypatch, written_store):
    """Pools never exceed embed.pool_size, every chunk is encoded, and an encode error fails only the document that
    causes it (also when it is alone in its pool: it used to stop the run)."""
    import time
    from collections import Counter

    from docingest.core import embed as embed_module
    from docingest.core import write as write_module
    from docingest.exceptions import EmbedError

    calls: list[list[str]] = []
    real = embed_module.embed_texts

    def slow_encoder(model, texts, batch_size=64):
        calls.append(list(texts))
        if any("POISON" in t for t in texts):
            raise EmbedError("RuntimeError: the encoder choked")
        time.sleep(0.3)  # a busy encoder: the next pool grows meanwhile
        return real(model, texts, batch_size)

    monkeypatch.setattr(write_module, "embed_texts", slow_encoder)
    docs = tmp_path / "pools"
    docs.mkdir()
    for i in range(40):
        word = "POISON" if i == 17 else "greenhouse"
        (docs / f"note{i:02}.md").write_text(f"# Note {i}\n\nThe {word} number {i} grows tomatoes and basil.\n")
    options = IngestOptions.model_validate({"embed": {"pool_size": 8}})
    result = ingest_documents(source=str(docs), collection="pools", options=options)

    assert (result.documents.new, result.documents.failed, result.chunks.upserted) == (40, 1, 39)
    assert [f.source.rsplit("/", 1)[-1] for f in result.failures] == ["note17.md"]
    assert result.failures[0].stage == "embed"
    assert max(len(c) for c in calls) <= 8
    pool = set(next(c for c in calls if any("POISON" in t for t in c)))
    counts = Counter(t for c in calls for t in c)
    assert len([t for t in counts if "POISON" not in t]) == 39  # every good chunk encoded...
    assert all(n == 1 for t, n in counts.items() if t not in pool)  # ...once, unless it shared the poisoned pool
    assert {p["path"] for p in all_points(written_store(), "pools").values()} == {
        f"note{i:02}.md" for i in range(40) if i != 17}

    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "only.md").write_text("# Only\n\nPOISON in the only document.\n")
    alone = ingest_documents(source=str(lone), collection="lone")
    assert (alone.documents.failed, alone.failures[0].stage) == (1, "embed")
