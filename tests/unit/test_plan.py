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
