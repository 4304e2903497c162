"""Stage tasks carry tags, so Prefect's own concurrency limits cap a stage across every run on a server."""

from __future__ import annotations

import re
import threading

import pytest

from docingest.flows.ingest import ingest_documents
from docingest.options import IngestOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NO_LIMITS_REMEMBERED_S = 5.5  # Prefect 3.8 caches "these tags have no concurrency limit" for 5 s per process


def test_a_parse_limit_of_one_holds_across_two_runs_started_together(prefect_server, home, tmp_path, monkeypatch):
    """The parsing itself is timed (both runs parse in this process): the task runs' state timestamps are taken
    around orchestration calls, so on a loaded machine they can overlap although the work did not.

    Prefect's client remembers for 5 s that a set of tags has no limit (`prefect.concurrency.services`): an earlier
    test's parse tasks in this process would let the first tasks here run unlimited. A limit created while runs are
    going takes effect within those seconds; the test waits them out (CI failed once on exactly this)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from docingest.core import pipeline

    parsed: list[tuple[float, float, str]] = []
    real_parse = pipeline.parse_document

    def timed_parse(path, *args, **kwargs):
        started = time.monotonic()
        try:
            return real_parse(path, *args, **kwargs)
        finally:
            parsed.append((started, time.monotonic(), str(path).rsplit("/", 1)[-1]))

    monkeypatch.setattr(pipeline, "parse_document", timed_parse)

    folders = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        for n in range(3):
            (folder / f"{name}-{n}.md").write_text(f"# {name} {n}\n\nDocument {n} of folder {name}.\n")
        folders.append(folder)
    options = IngestOptions.model_validate({"docs_per_task": 1, "parse": {"isolation": "none"}})
    results: dict[str, object] = {}

    def run(folder) -> None:
        try:
            results[folder.name] = ingest_documents(source=str(folder), collection=f"limit-{folder.name}",
                                                    options=options)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[folder.name] = exc

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="docingest-parse", concurrency_limit=1)
        time.sleep(NO_LIMITS_REMEMBERED_S)
        try:
            threads = [threading.Thread(target=run, args=(folder,)) for folder in folders]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=300)
            ids = [str(r.flow_run_id) for r in results.values() if hasattr(r, "flow_run_id")]
            assert len(ids) == 2, results
            assert all(r.documents.new == 3 and r.documents.failed == 0 for r in results.values())
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        finally:
            client.delete_concurrency_limit_by_tag("docingest-parse")
    parses = [r for r in runs if "docingest-parse" in r.tags]
    assert len(parses) == 6 and all(r.start_time and r.end_time for r in parses)
    parsed.sort()
    assert len(parsed) == 6, parsed
    for (_, end, first), (start, _, second) in zip(parsed, parsed[1:], strict=False):
        assert start >= end, f"{second} started parsing {end - start:.3f}s before {first} ended"
    names = {r.name for r in runs}
    assert "ensure collection limit-one" in names, names
    assert any(re.fullmatch(r"embed \d chunks? of \d documents?", n) for n in names), names
    assert any(re.fullmatch(r"upsert \d points? and finalize \d documents?", n) for n in names), names
    assert all({"docingest", "docingest-store"} <= set(r.tags) for r in runs if r.name.startswith("upsert"))
