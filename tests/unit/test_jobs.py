"""The upload service's embedded jobs: the order they are taken in, and a job that ends when its document does."""

from __future__ import annotations

import uuid

import pytest

from docingest.core import progress
from docingest.datamodel import ChangeKind, DocumentOutcome, DocumentStatus, IngestResult, Stage
from docingest.service.jobs import JobManager

pytestmark = pytest.mark.unit


class Store:
    def source_uri(self, collection: str) -> str:
        return f"/uploads/sources/{collection}"


@pytest.fixture
def jobs(tmp_path):
    manager = JobManager(tmp_path / "jobs", Store(), concurrency=2, parse_timeout_s=7)
    manager.close()  # no worker thread: the test drives it
    manager._closed = False
    manager._prefect_up = True  # no Prefect API in a unit test: the flow is replaced
    return manager


def submit(jobs: JobManager, user: str, collection: str = "kb", priority: str = "normal"):
    upload = uuid.uuid4().hex
    return jobs.submit(user, upload, collection, f"{upload}/doc.md", priority)


def test_jobs_are_taken_by_priority_then_round_robin_between_users(jobs):
    flood = [submit(jobs, "alice") for _ in range(5)]  # alice's five arrive first
    bob = submit(jobs, "bob")
    carol = submit(jobs, "carol", priority="high")
    order = [j.job_id for j in jobs._queued()]
    assert order[:4] == [carol.job_id, flood[0].job_id, bob.job_id, flood[1].job_id]


def test_runs_are_bounded_and_a_collection_s_new_uploads_do_not_wait_for_its_run(jobs):
    submit(jobs, "alice", "a")
    submit(jobs, "bob", "a")
    submit(jobs, "carol", "b")
    first, second = jobs._next_batch(), jobs._next_batch()
    assert {j.collection for j in first} == {"a"} and len(first) == 2  # a collection's waiting jobs go together
    assert {j.collection for j in second} == {"b"}
    later = submit(jobs, "dave", "a")
    assert jobs._next_batch() == []  # two runs at once (concurrency=2)
    assert all(j.state == "running" for j in first + second)
    assert jobs._options(first) == {"source": {"include": [f"{j.upload_id}/**" for j in first]},
                                    "parse": {"timeout_s": 7}}
    jobs._running -= 1  # b's run ends; a's still runs (a document that parses for minutes)
    assert jobs._next_batch() == [later]  # a run of its own, narrowed to its own upload: not behind a's first run
    assert jobs._options([later]) == {"source": {"include": [f"{later.upload_id}/**"]}, "parse": {"timeout_s": 7}}


def test_a_job_ends_when_its_document_does_not_when_the_run_does(jobs, monkeypatch):
    quick, slow = submit(jobs, "alice"), submit(jobs, "bob")
    seen_while_running = {}

    def fake_ingest(source, collection, options):
        done = DocumentOutcome(source=f"file://{source}/{quick.document}", path=quick.document,
                               status=DocumentStatus.SUCCESS, change=ChangeKind.NEW, chunks=2)
        progress.emit(progress.ProgressEvent(1, 2, "other-upload/x.md", "success", "", done))  # another run's
        progress.emit(progress.ProgressEvent(1, 2, done.path, "success", done.source, done))
        seen_while_running.update({j.job_id: j.state for j in (quick, slow)})
        timed_out = DocumentOutcome(source="", path=slow.document, status=DocumentStatus.FAILURE, stage=Stage.PARSE,
                                    error=f"parse timed out after 7 s: /srv/docingest/uploads/sources/kb/{slow.document}"
                                          f" (file:///srv/docingest/uploads/sources/kb/{slow.document})")
        return IngestResult(collection=collection, flow_run_id=str(uuid.uuid4()), outcomes=[done, timed_out])

    monkeypatch.setattr("docingest.flows.ingest.ingest_documents", fake_ingest)
    batch = jobs._next_batch()
    jobs._run_embedded(batch)
    assert seen_while_running == {quick.job_id: "completed", slow.job_id: "running"}
    assert (quick.state, quick.chunks) == ("completed", 2)
    assert slow.state == "failed" and "timed out" in slow.error
    assert "/srv" not in slow.error and "doc.md" in slow.error  # no server paths in what a client sees
    assert "/srv" not in str(slow.failures)
    assert quick.flow_run_id and quick.flow_run_id == slow.flow_run_id
    assert jobs._running == 0  # its slot is free again


def test_parse_workers_outlive_every_run_but_the_last(monkeypatch):
    """Runs in one process share the parse workers: the first run to end must not stop them under the second (the
    service runs several at once; it did, and the second run failed in `close`)."""
    from docingest.core import worker

    closed = []

    class Pool:
        def close(self):
            closed.append(self)

    monkeypatch.setattr(worker, "_pools", {"k": Pool()})
    with worker.pools_in_use():
        with worker.pools_in_use():
            pass
        assert closed == []  # the other run still uses them
    assert len(closed) == 1 and worker._pools == {}


def test_a_batch_takes_a_few_of_each_user_s_jobs_and_finished_jobs_expire(jobs):
    flood = [submit(jobs, "alice") for _ in range(15)]
    bob = submit(jobs, "bob")
    batch = jobs._next_batch()
    assert bob in batch and sum(j.user == "alice" for j in batch) == 10  # alice's flood is not one long run
    for job in batch:
        jobs._finish(job, "success", "new")
    assert jobs.counts() == {"queued": 5, "running": 0, "completed": 11, "failed": 0}
    assert jobs.expire(60, now=bob.finished_at + 61) == 11
    assert jobs.get("bob", bob.job_id) is None and not (jobs.root / f"{bob.job_id}.json").exists()
    assert jobs.get("alice", flood[-1].job_id) is not None  # still queued: kept


def test_freed_memory_goes_back_when_the_last_run_ends(jobs, monkeypatch):
    """A long-running service hands the runs' freed memory back to the OS as it goes idle, not while a run goes on
    (the soak's uploads left ~80 MiB freed but mapped in an idle service)."""
    from docingest.core import memory

    trims = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: trims.append(jobs.runs_in_progress()))
    ran = []
    monkeypatch.setattr(jobs, "_run_batch", lambda batch: ran.append(batch))
    submit(jobs, "alice", "a")
    submit(jobs, "bob", "b")
    first, second = jobs._next_batch(), jobs._next_batch()
    jobs._run_embedded(first)
    assert ran == [first] and trims == []  # b's run still goes on
    jobs._run_embedded(second)
    assert trims == [1]  # once, by the last run, before it counts as ended: who sees 0 runs sees the memory back
    assert jobs.runs_in_progress() == 0
