import pytest

from docingest.core.metrics import RunMetrics, error_class
from docingest.datamodel import DocumentOutcome, DocumentStatus, FailureItem, IngestResult, Stage

pytestmark = pytest.mark.unit


def sample(metrics: RunMetrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, {"collection": "kb", "scope": "file:///d", **labels})


def result_with(*outcomes: DocumentOutcome, failures=()) -> IngestResult:
    result = IngestResult(collection="kb", source="file:///d", outcomes=list(outcomes), failures=list(failures))
    result.documents.failed = len(failures)
    result.chunks.upserted = 7
    return result


def test_outcomes_failures_and_last_success_only_on_success():
    ok = DocumentOutcome(source="file:///d/a.md", path="a.md", status=DocumentStatus.SUCCESS, chunks=7)
    bad = DocumentOutcome(source="file:///d/b.pdf", path="b.pdf", status=DocumentStatus.FAILURE, stage=Stage.PARSE,
                          error="timeout: parsing took longer than 120 s")
    metrics = RunMetrics("kb", "file:///d")
    metrics.observe_embed(32, 2.0)
    metrics.observe_embed(32, 2.0)
    metrics.finish(result_with(ok, bad, failures=[FailureItem(source=bad.source, stage="parse", error=bad.error)]),
                   succeeded=False)
    assert sample(metrics, "docingest_documents_total", outcome="success", stage="") == 1
    assert sample(metrics, "docingest_documents_total", outcome="failed", stage="parse") == 1
    assert sample(metrics, "docingest_failures_total", stage="parse", error_class="timeout") == 1
    assert sample(metrics, "docingest_chunks_total", operation="upserted") == 7
    assert sample(metrics, "docingest_embed_chunks_per_second") == 16
    assert sample(metrics, "docingest_embed_batch_size_count") == 2
    assert sample(metrics, "docingest_run_status") == 0
    assert sample(metrics, "docingest_last_success_timestamp_seconds") is None

    good = RunMetrics("kb", "file:///d")
    good.finish(result_with(ok), succeeded=True)
    assert sample(good, "docingest_run_status") == 1
    assert sample(good, "docingest_last_success_timestamp_seconds") > 0


def test_error_class_is_a_short_bounded_label():
    assert error_class("timeout: parsing took longer than 120 s") == "timeout"
    assert error_class("parser crashed (killed by signal 9)") == "error"
    assert error_class("memory limit: parser used 5000 MB > 4096 MB") == "memory_limit"
    assert error_class("ValueError: bad") == "ValueError"
    assert error_class("x" * 80 + ": y") == "error"
