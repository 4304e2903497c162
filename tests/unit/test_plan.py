import pytest

from docingest.core.embed import ModelInfo
from docingest.core.plan import classify, resolve_profile
from docingest.datamodel import ChangeKind, DocumentStatus, ManifestRecord, SourceDocument
from docingest.options import ChunkOptions, IngestOptions, ParseOptions

pytestmark = pytest.mark.unit

MODEL = ModelInfo(name="m", location="/m", revision="r1", dimension=384, max_seq_length=256)


def doc(h="aa"):
    return SourceDocument(source_uri="file:///s", path="a.md", uri="file:///s/a.md", size=1, content_hash=h)


def record(profile, h="aa", status=DocumentStatus.SUCCESS):
    return ManifestRecord(doc_id="d", source_uri="file:///s", path="a.md", uri="file:///s/a.md", content_hash=h,
                          fingerprint=profile.fingerprint, version="v", status=status)


def test_classify_new_changed_unchanged():
    profile = resolve_profile(IngestOptions(parse=ParseOptions(pdf_mode="fast")), MODEL)
    assert classify(doc(), None, profile) is ChangeKind.NEW
    assert classify(doc(), record(profile), profile) is ChangeKind.UNCHANGED
    assert classify(doc("bb"), record(profile), profile) is ChangeKind.CHANGED
    # A document that failed last time is retried even though its bytes did not change.
    assert classify(doc(), record(profile, status=DocumentStatus.FAILURE), profile) is ChangeKind.CHANGED


def test_settings_that_shape_output_change_the_fingerprint():
    base = resolve_profile(IngestOptions(parse=ParseOptions(pdf_mode="fast")), MODEL)
    smaller = resolve_profile(IngestOptions(parse=ParseOptions(pdf_mode="fast"), chunk=ChunkOptions(max_tokens=128)),
                              MODEL)
    other_model = resolve_profile(IngestOptions(parse=ParseOptions(pdf_mode="fast")),
                                  ModelInfo(name="m", location="/m", revision="r2", dimension=384, max_seq_length=256))
    same = resolve_profile(IngestOptions(parse=ParseOptions(pdf_mode="fast"), window=3), MODEL)
    assert smaller.fingerprint != base.fingerprint
    assert other_model.fingerprint != base.fingerprint
    assert same.fingerprint == base.fingerprint  # throughput knobs do not re-embed anything
    assert classify(doc(), record(base), smaller) is ChangeKind.CHANGED
    int8 = resolve_profile(IngestOptions(parse=ParseOptions(pdf_mode="fast")),
                           ModelInfo(name="m", location="/m", revision="r1", dimension=384, max_seq_length=256,
                                     backend="int8"))
    assert int8.fingerprint != base.fingerprint  # other vectors: re-embedded
    assert base.fingerprint == "c417d016fcb4f3db"  # OCR counts only for images and PDFs since this value
    # The value before (with Tesseract installed, as on CI) still counts as current for other documents: no re-embed.
    assert "65280b85a325daff" in base.legacy_fingerprints
    legacy = record(base).model_copy(update={"fingerprint": "65280b85a325daff"})
    assert classify(doc(), legacy, base) is ChangeKind.UNCHANGED


from docingest.core.plan import Action, make_plan  # noqa: E402
from docingest.exceptions import DeleteGuardError  # noqa: E402


def docs(*names, h="aa"):
    return [SourceDocument(source_uri="file:///s", path=n, uri=f"file:///s/{n}", size=1, content_hash=h)
            for n in names]


def known(profile, *names, status=DocumentStatus.SUCCESS, attempts=0):
    return {n: ManifestRecord(doc_id=n, source_uri="file:///s", path=n, uri=f"file:///s/{n}", content_hash="aa",
                              fingerprint=profile.fingerprint, version="v", status=status, attempts=attempts)
            for n in names}


def test_plan_incremental_never_deletes_full_lists_vanished():
    o = IngestOptions(parse=ParseOptions(pdf_mode="fast"))
    profile = resolve_profile(o, MODEL)
    k = known(profile, "a.md", "b.md", "c.md")
    incremental = make_plan("file:///s", docs("a.md", "b.md", "d.md", "e.bin"), k, profile, o)
    assert incremental.deleted == []
    assert incremental.counts() == {"seen": 4, "new": 1, "changed": 0, "unchanged": 2, "deleted": 0, "skipped": 1,
                                    "dead_letter": 0}
    full = make_plan("file:///s", docs("a.md", "b.md", "d.md"), k, profile,
                     IngestOptions(parse=ParseOptions(pdf_mode="fast"), mode="full"))
    assert [r.path for r in full.deleted] == ["c.md"]


def test_delete_guard_refuses_past_the_ratio_unless_forced():
    o = IngestOptions(parse=ParseOptions(pdf_mode="fast"), mode="full")
    profile = resolve_profile(o, MODEL)
    k = known(profile, "a.md", "b.md", "c.md", "d.md")
    with pytest.raises(DeleteGuardError, match=r"refusing to delete 4 of 4 documents \(100%\)"):
        make_plan("file:///s", [], k, profile, o)  # an unmounted share looks empty
    forced = IngestOptions(parse=ParseOptions(pdf_mode="fast"), mode="full", force=True)
    assert len(make_plan("file:///s", [], k, profile, forced).deleted) == 4
    assert len(make_plan("file:///s", docs("a.md", "b.md"), k, profile, o).deleted) == 2  # 50% is allowed


def test_full_sync_narrowed_by_filters_never_deletes_outside_them():
    # An upload job syncs only its own folder; `--include "*.md"` must not delete the PDFs it did not look at.
    o = IngestOptions(parse=ParseOptions(pdf_mode="fast"), mode="full", source={"include": ["u1/**"]})
    profile = resolve_profile(o, MODEL)
    k = known(profile, "u1/a.md", "u1/gone.md", "u2/b.md", "u3/c.md")
    plan = make_plan("file:///s", docs("u1/a.md"), k, profile, o)
    assert [r.path for r in plan.deleted] == ["u1/gone.md"]  # 1 of the 2 in scope: 50%, allowed
    md_only = IngestOptions(parse=ParseOptions(pdf_mode="fast"), mode="full",
                            source={"include": ["**/*.md"], "exclude": ["drafts/**"]})
    k = known(profile, "a.md", "b.pdf", "drafts/x.md", "c.md")
    assert [r.path for r in make_plan("file:///s", docs("a.md"), k, profile, md_only).deleted] == ["c.md"]


def test_a_watch_batch_guards_deletes_as_a_share_of_the_whole_source():
    # A watch batch is narrowed to the paths that changed: deleting the one file it names is 100 % of its filters,
    # but 1 of the source's 4 documents.
    batch = IngestOptions(parse=ParseOptions(pdf_mode="fast"), mode="full", source={"include": ["b.md"]})
    profile = resolve_profile(batch, MODEL)
    k = known(profile, "a.md", "b.md", "c.md", "d.md")
    with pytest.raises(DeleteGuardError, match=r"refusing to delete 1 of 1 documents"):
        make_plan("file:///s", [], k, profile, batch)
    of_source = batch.model_copy(update={"delete_guard_of": "source"})
    assert [r.path for r in make_plan("file:///s", [], k, profile, of_source).deleted] == ["b.md"]
    everything = of_source.model_copy(update={"source": of_source.source.model_copy(update={"include": ["**/*"]})})
    with pytest.raises(DeleteGuardError, match=r"refusing to delete 3 of 4 documents \(75%\)"):
        make_plan("file:///s", docs("a.md"), k, profile, everything)  # still a guard: 3 of the source's 4


def test_repeated_failures_are_dead_lettered_until_the_document_changes():
    o = IngestOptions(parse=ParseOptions(pdf_mode="fast"), max_doc_attempts=3)
    profile = resolve_profile(o, MODEL)
    assert make_plan("file:///s", docs("a.md"), known(profile, "a.md", status=DocumentStatus.FAILURE, attempts=2),
                     profile, o).documents[0].action is Action.PROCESS
    dead = make_plan("file:///s", docs("a.md"), known(profile, "a.md", status=DocumentStatus.FAILURE, attempts=3),
                     profile, o).documents[0]
    assert dead.action is Action.DEAD_LETTER and "dead-lettered after 3" in dead.reason
    changed = make_plan("file:///s", docs("a.md", h="bb"),
                        known(profile, "a.md", status=DocumentStatus.FAILURE, attempts=3), profile, o)
    assert changed.documents[0].action is Action.PROCESS


def test_int8_collections_made_per_tensor_are_re_embedded(monkeypatch):
    """int8 now quantizes weights per channel (other vectors): its fingerprint is not the per-tensor scheme's, while
    torch's stays as it was (asserted above)."""
    from docingest.core import embed

    int8 = ModelInfo(name="m", location="/m", revision="r1", dimension=384, max_seq_length=256, backend="int8")
    options = IngestOptions(parse=ParseOptions(pdf_mode="fast"))
    per_channel = resolve_profile(options, int8).fingerprint
    monkeypatch.setattr(embed, "BACKEND_FINGERPRINTS", {})  # the fingerprint part before: the backend's name
    assert resolve_profile(options, int8).fingerprint != per_channel
