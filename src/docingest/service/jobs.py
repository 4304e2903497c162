"""Ingestion jobs of the upload service: a bounded background worker running the ingest flow in this process.

Each completed upload is one job: the flow syncs the collection's upload source restricted to that upload's folder
(same ids, sync and failure semantics as any other source). Progress comes from the flow's progress events and is
pushed to WebSocket subscribers as it happens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

JOB_STATES = ("queued", "running", "completed", "failed")


class Job(BaseModel):
    job_id: str
    user: str
    upload_id: str
    collection: str
    document: str = Field(description="Path of the document in the collection's upload source.")
    priority: str = "normal"
    state: str = "queued"
    progress: float = 0.0
    counts: dict[str, int] = Field(default_factory=dict)
    failures: list[dict] = Field(default_factory=list)
    error: str | None = None
    flow_run_id: str | None = None
    created_at: float = Field(default_factory=time.time)
    finished_at: float | None = None

    def public(self) -> dict:
        return self.model_dump(exclude={"user"})


class JobManager:
    """Jobs by id, run one at a time by a worker thread (bounded queue); persisted as JSON under ``root``."""

    def __init__(self, root: Path, sources: Path, max_queue: int = 1000) -> None:
        self.root, self.sources = Path(root), Path(sources)
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        for path in self.root.glob("*.json"):
            job = Job.model_validate_json(path.read_text())
            if job.state in ("queued", "running"):  # the process stopped under it: run it again (ids are stable)
                job.state, job.progress = "queued", 0.0
            self.jobs[job.job_id] = job
        self.max_queue = max_queue
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="docingest-job")
        self._lock = threading.Lock()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, set[str]]] = []
        self._current: str | None = None
        self._closed = False
        for job in sorted(self.jobs.values(), key=lambda j: j.created_at):
            if job.state == "queued":
                self._pool.submit(self._run, job.job_id)

    def pending(self) -> int:
        return sum(j.state in ("queued", "running") for j in self.jobs.values())

    def submit(self, user: str, upload_id: str, collection: str, document: str, priority: str) -> Job:
        from docingest.service.uploads import UploadError

        if self._closed:
            raise UploadError(503, "the service is shutting down")
        if self.pending() >= self.max_queue:
            raise UploadError(503, "too many jobs queued; retry later")
        job = Job(job_id=uuid.uuid4().hex, user=user, upload_id=upload_id, collection=collection,
                  document=document, priority=priority)
        self._store(job)
        self._pool.submit(self._run, job.job_id)
        return job

    def get(self, user: str, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.user == user else None

    def list(self, user: str) -> list[Job]:
        return sorted((j for j in self.jobs.values() if j.user == user), key=lambda j: j.created_at, reverse=True)

    def _store(self, job: Job) -> None:
        with self._lock:
            self.jobs[job.job_id] = job
            tmp = self.root / f"{job.job_id}.json.tmp"
            tmp.write_text(job.model_dump_json())
            tmp.replace(self.root / f"{job.job_id}.json")
        self._publish(job)

    # -- WebSocket fan-out: events are pushed from the worker thread into each subscriber's loop ---------------------
    def subscribe(self, job_ids: set[str]) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._subscribers.append((asyncio.get_running_loop(), queue, job_ids))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers = [s for s in self._subscribers if s[1] is not queue]

    def _publish(self, job: Job) -> None:
        message = {"type": "job", **job.public()}
        for loop, queue, ids in list(self._subscribers):
            if job.job_id in ids:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, message)
                except (RuntimeError, asyncio.QueueFull):  # loop closed or a client that does not read
                    pass

    # -- the worker ----------------------------------------------------------------------------------------------------
    def _run(self, job_id: str) -> None:
        from docingest.core import progress
        from docingest.flows.ingest import ingest_documents
        from docingest.options import IngestOptions, SourceOptions

        job = self.jobs[job_id]
        job.state = "running"
        self._store(job)
        last = [0.0]

        def on_progress(event: progress.ProgressEvent) -> None:
            now = time.monotonic()
            if event.total and (now - last[0] > 0.2 or event.done == event.total):
                last[0] = now
                job.progress = round(100.0 * event.done / event.total, 1)
                self._store(job)

        progress.add_listener(on_progress)
        try:
            options = IngestOptions(source=SourceOptions(include=[f"{job.upload_id}/**"]))
            result = ingest_documents(source=str(self.sources / job.collection), collection=job.collection,
                                      options=options)
            job.flow_run_id = result.flow_run_id
            job.counts = result.documents.model_dump()
            job.failures = [f.model_dump() for f in result.failures]
            job.state = "completed" if result.ok else "failed"
            job.error = None if result.ok else "the document failed: see failures"
        except Exception as exc:  # noqa: BLE001 - a job's failure is its state, never the service's crash
            job.state, job.error = "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            progress.remove_listener(on_progress)
        job.progress = 100.0
        job.finished_at = time.time()
        self._store(job)

    def close(self, wait: bool = True) -> None:
        """Graceful shutdown: take no new jobs; finish the running one (queued ones stay queued on disk)."""
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)
