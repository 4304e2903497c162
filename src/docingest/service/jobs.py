"""Ingestion jobs of the upload service.

Each completed upload is one job: its document is ``<upload id>/<name>`` in the collection's upload source, synced
by the ingest flow restricted to that folder (same ids, sync and failure semantics as any other source). Two ways to
run them:

- **embedded** (default): the flow runs in this process, up to ``DOCINGEST_UPLOAD_JOB_CONCURRENCY`` runs at once
  (a thread pool), of one collection or of several: each run is narrowed to its uploads' folders, so runs of one
  collection do not wait for each other's lock. Jobs waiting for the same collection are taken together as one flow
  run (a flow run per upload would cost seconds each; 50 uploads arriving at once become one or two runs). Jobs are
  taken highest priority first, and round robin between users of equal priority, so one user's hundred uploads do
  not queue ahead of another user's one. Each job ends as soon as its document's outcome is recorded (its chunks are
  searchable), not when its run ends: a document that times out fails alone and holds no one else's completion, in
  its run or in a later run of its collection.
- **deployment** (``DOCINGEST_UPLOAD_DEPLOYMENT``): each job is a run of that Prefect deployment on the work queue
  named by its priority (critical/high/normal/low). One watcher reads the state and progress artifact of every
  active job's flow run from the Prefect API, once a second for all of them; a completed run's per-document outcome
  comes from its persisted result (the flow's ``IngestResult``).

Either way, subscribers (the WebSocket endpoint) get every change pushed as it happens; clients never poll.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, Field

from docingest.core import memory
from docingest.service.uploads import PRIORITIES, UploadError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

    from docingest.datamodel import DocumentOutcome
    from docingest.service.uploads import UploadStore

JOB_STATES = ("queued", "running", "completed", "failed")
BATCH = 50  # jobs of one collection per embedded flow run
BATCH_PER_USER = 10  # of them, at most this many of one user's
WATCH_INTERVAL_S = 1.0
WATCH_PAGE = 50  # flow runs per API read (one progress artifact each; Prefect's default limit is 200 rows)


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
    chunks: int = 0
    failures: list[dict] = Field(default_factory=list)
    error: str | None = None
    flow_run_id: str | None = None
    created_at: float = Field(default_factory=time.time)
    finished_at: float | None = None

    def public(self) -> dict:
        return self.model_dump(exclude={"user"})


def _counts(status: str, change: str | None) -> dict[str, int]:
    from docingest.datamodel import DocumentCounts

    counts = DocumentCounts(seen=1).model_dump()
    key = {"success": change or "new", "unchanged": "unchanged", "skipped": "skipped"}.get(status, "failed")
    counts[key if key in counts else "new"] = 1
    return counts


_PATH = re.compile(r"(?:file://)?(?:/[^\s/'\"(),:;]+)+/([^\s/'\"(),:;]+)")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path or file URI cut to its last component: a parser's message names the file
    on the server, and a client must not learn the server's folders."""
    return _PATH.sub(r"\1", text)


class JobManager:
    """Jobs by id, persisted as JSON under ``root``; run by one background thread (see the module doc)."""

    def __init__(self, root: Path, store: UploadStore, deployment: str | None = None, max_queue: int = 1000,
                 concurrency: int = 2, parse_timeout_s: float | None = None) -> None:
        self.root, self.store, self.deployment = Path(root), store, deployment
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        for path in self.root.glob("*.json"):
            job = Job.model_validate_json(path.read_text())
            if job.state in ("queued", "running") and not (deployment and job.flow_run_id):
                # The process stopped under it: run it again (document ids are stable, so nothing duplicates).
                # A run id from deployment mode is dropped: embedded mode runs the job itself.
                job.state, job.progress, job.flow_run_id = "queued", 0.0, None
            self.jobs[job.job_id] = job
        self.max_queue = max_queue
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, set[str]]] = []
        self._closed = False
        self._running = 0  # embedded runs in progress
        self._prefect_lock, self._prefect_up = threading.Lock(), False
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="docingest-job-run")
        self.concurrency, self.parse_timeout_s = concurrency, parse_timeout_s
        self._thread = threading.Thread(target=self._loop, name="docingest-jobs", daemon=True)
        self._thread.start()

    @property
    def mode(self) -> str:
        return "deployment" if self.deployment else "embedded"

    def pending(self) -> int:
        with self._lock:
            return sum(j.state in ("queued", "running") for j in self.jobs.values())

    def runs_in_progress(self) -> int:
        """Embedded flow runs going on now (a job completes when its document does, before its run ends)."""
        with self._lock:
            return self._running

    def check_capacity(self) -> None:
        """Raise 503 when no job can be taken now (shutting down, or the queue is full)."""
        if self._closed:
            raise UploadError(503, "the service is shutting down")
        if self.pending() >= self.max_queue:
            raise UploadError(503, "too many jobs queued; retry later")

    def submit(self, user: str, upload_id: str, collection: str, document: str, priority: str) -> Job:
        self.check_capacity()
        job = Job(job_id=uuid.uuid4().hex, user=user, upload_id=upload_id, collection=collection,
                  document=document, priority=priority)
        self._store(job)
        with self._wake:
            self._wake.notify_all()
        return job

    def get(self, user: str, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.user == user else None

    def list(self, user: str) -> list[Job]:
        with self._lock:
            mine = [j for j in self.jobs.values() if j.user == user]
        return sorted(mine, key=lambda j: j.created_at, reverse=True)

    def counts(self) -> dict[str, int]:
        """Jobs by state."""
        with self._lock:
            return {state: sum(j.state == state for j in self.jobs.values()) for state in JOB_STATES}

    def expire(self, max_age_s: float, now: float | None = None) -> int:
        """Forget finished jobs older than ``max_age_s`` (their records and files); returns how many."""
        now = now or time.time()
        with self._lock:
            old = [j for j in self.jobs.values() if j.finished_at is not None and now - j.finished_at > max_age_s]
            for job in old:
                del self.jobs[job.job_id]
                (self.root / f"{job.job_id}.json").unlink(missing_ok=True)
        return len(old)

    def _store(self, job: Job) -> None:
        with self._lock:
            self.jobs[job.job_id] = job
            tmp = self.root / f"{job.job_id}.json.tmp"
            tmp.write_text(job.model_dump_json())
            tmp.replace(self.root / f"{job.job_id}.json")
        self._publish(job)

    def _finish(self, job: Job, status: str, change: str | None = None, stage: str | None = None,
                chunks: int = 0, error: str | None = None) -> None:
        error = scrub_paths(error) if error else error
        job.counts, job.chunks = _counts(status, change), chunks
        ok = status in ("success", "unchanged")
        job.state = "completed" if ok else "failed"
        job.failures = [] if ok else [{"path": job.document, "stage": stage or "", "error": error or status}]
        job.error = None if ok else f"the document was not ingested ({stage or status}): {(error or '')[:300]}"
        job.progress, job.finished_at = 100.0, time.time()
        self._store(job)

    # -- WebSocket fan-out: events are pushed from the worker thread into each subscriber's loop ---------------------
    def subscribe(self, job_ids: set[str]) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._subscribers.append((asyncio.get_running_loop(), queue, job_ids))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers = [s for s in self._subscribers if s[1] is not queue]

    def _publish(self, job: Job) -> None:
        message = {"type": "job", **job.public()}
        def put(queue: asyncio.Queue) -> None:
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # a client that does not read: it misses messages, nobody else waits
                pass

        for loop, queue, ids in list(self._subscribers):
            if job.job_id in ids:
                try:
                    loop.call_soon_threadsafe(put, queue)
                except RuntimeError:  # its loop is closed
                    pass

    # -- the worker ----------------------------------------------------------------------------------------------------
    def _queued(self) -> builtins.list[Job]:
        """Queued jobs in the order they are taken: priority, then round robin between users (each user's first job,
        then each user's second...), then age."""
        with self._lock:
            jobs = sorted((j for j in self.jobs.values() if j.state == "queued" and not j.flow_run_id),
                          key=lambda j: j.created_at)
        turn: dict[tuple[str, str], int] = {}
        ranked = []
        for job in jobs:
            key = (job.priority, job.user)
            turn[key] = turn.get(key, 0) + 1
            ranked.append((PRIORITIES.index(job.priority), turn[key], job.created_at, job))
        return [r[-1] for r in sorted(ranked, key=lambda r: r[:3])]

    def _next_batch(self) -> builtins.list[Job]:
        """The next embedded run's jobs: the first waiting job, with its collection's other waiting jobs, in the same
        order; empty when the pool is full or nothing waits. A collection's new uploads do not wait for its run in
        progress (a document that parses for minutes there): they start a run of their own when a slot is free."""
        with self._lock:
            if self._running >= self.concurrency:
                return []
            queued = self._queued()
            if not queued:
                return []
            batch: builtins.list[Job] = []
            per_user: dict[str, int] = {}
            for job in queued:  # in the fair order; a few of each user's, so one user's flood is not one long run
                if job.collection == queued[0].collection and per_user.get(job.user, 0) < BATCH_PER_USER:
                    per_user[job.user] = per_user.get(job.user, 0) + 1
                    batch.append(job)
                    if len(batch) == BATCH:
                        break
            self._running += 1
            for job in batch:
                job.state = "running"
        for job in batch:
            self._store(job)
        return batch

    def _watched(self) -> builtins.list[Job]:
        with self._lock:
            return [j for j in self.jobs.values() if j.flow_run_id and j.state in ("queued", "running")]

    def _loop(self) -> None:
        import logging

        log = logging.getLogger("docingest.service")
        while True:
            with self._wake:
                while not self._closed and not self._queued() and not (self.deployment and self._watched()):
                    self._wake.wait()
                if self._closed:
                    return
            try:
                if self.deployment:
                    for job in self._queued():
                        self._dispatch(job)
                    self._watch()
                    with self._wake:
                        self._wake.wait(WATCH_INTERVAL_S)
                else:
                    while batch := self._next_batch():
                        self._pool.submit(self._run_embedded, batch)
                    with self._wake:  # until a run ends or a job arrives
                        self._wake.wait(WATCH_INTERVAL_S)
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure (e.g. the API is down)
                log.exception("job worker error; retrying")
                time.sleep(2)

    def _run_embedded(self, batch: builtins.list[Job]) -> None:
        """One flow run for a collection's batch (on the pool); each job ends when its document's outcome is
        recorded (progress events carry it), the rest when the run ends."""
        try:
            self._run_batch(batch)
        finally:
            with self._wake:
                last = self._running == 1
            if last:
                # The runs' memory is free now, but glibc keeps most of it mapped: an idle service would hold
                # ~80 MiB more after a burst of uploads than it uses (measured with the soak's uploads). Hand it back,
                # before the count of runs (docingest_job_runs) reaches 0: whoever sees the service idle sees it trimmed.
                memory.release_freed_memory()
            with self._wake:
                self._running -= 1
                self._wake.notify_all()

    def _run_batch(self, batch: builtins.list[Job]) -> None:
        from docingest.core import progress
        from docingest.flows.ingest import ingest_documents
        from docingest.options import IngestOptions

        collection = batch[0].collection
        source = self.store.source_uri(collection)
        pending = {job.document: job for job in batch}
        uploads = {job.upload_id for job in batch}
        pending_lock = threading.Lock()
        last = [0.0]

        def finish(job: Job, outcome: DocumentOutcome) -> None:
            self._finish(job, outcome.status.value, outcome.change.value if outcome.change else None,
                         outcome.stage.value if outcome.stage else None, outcome.chunks, outcome.error)

        def on_progress(event: progress.ProgressEvent) -> None:
            # Events of every run in this process arrive here; this run's documents are in its uploads' folders.
            if event.path.split("/", 1)[0] not in uploads:
                return
            with pending_lock:
                job = pending.pop(event.path, None) if event.outcome is not None else None
                waiting = list(pending.values())
            if job is not None:
                finish(job, event.outcome)
            now = time.monotonic()
            if job is not None or (waiting and now - last[0] > 0.2):
                last[0] = now
                share = min(99.0, round(100.0 * event.done / event.total, 1)) if event.total else 0.0
                for other in waiting:  # the run's share done
                    if other.progress != share:
                        other.progress = share
                        self._store(other)

        progress.add_listener(on_progress)
        try:
            self.prefect_ready()
            options = IngestOptions.model_validate(self._options(batch))
            result = ingest_documents(source=source, collection=collection, options=options)
        except Exception as exc:  # noqa: BLE001 - a job's failure is its state, never the service's crash
            logging.getLogger("docingest.service").exception("the run of %d jobs in %r failed", len(batch),
                                                             collection)
            with pending_lock:
                failed = builtins.list(pending.values())
                pending.clear()
            for job in failed:
                self._finish(job, "failure", stage="run", error=f"{type(exc).__name__}: {str(exc)[:300]}")
            return
        finally:
            progress.remove_listener(on_progress)
        with pending_lock:
            unseen = dict(pending)
            pending.clear()
        for outcome in result.outcomes:  # outcomes no event carried (a run that ended early)
            if outcome.path in unseen:
                finish(unseen.pop(outcome.path), outcome)
        for job in unseen.values():  # not seen by the run: its file is gone
            self._finish(job, "failure", stage="read", error="the uploaded document was not found in the source")
        for job in batch:
            if job.flow_run_id is None:
                job.flow_run_id = result.flow_run_id
                self._store(job)

    def prefect_ready(self) -> None:
        """Reach the Prefect API once before the first run (a job's or a live source's): with no API configured, that
        starts Prefect's temporary server, and two runs starting it at once (the first jobs of two collections) race
        and both fail with "Failed to reach API"."""
        with self._prefect_lock:
            if self._prefect_up:
                return
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                if (error := client.api_healthcheck()) is not None:
                    raise error
            self._prefect_up = True

    def _options(self, jobs: builtins.list[Job]) -> dict:
        """The ingest options of a run of ``jobs``: only their uploads' folders, the service's parse timeout."""
        options: dict = {"source": {"include": [f"{job.upload_id}/**" for job in jobs]}}
        if self.parse_timeout_s is not None:
            options["parse"] = {"timeout_s": self.parse_timeout_s}
        return options

    # -- deployment mode ------------------------------------------------------------------------------------------
    def _dispatch(self, job: Job) -> None:
        from prefect.deployments import run_deployment

        if self.deployment is None:
            raise RuntimeError("deployment mode without a deployment name")
        run = cast(Any, run_deployment(  # from sync code: the flow run, not a coroutine
            self.deployment, timeout=0, as_subflow=False, work_queue_name=job.priority,
            tags=["docingest-upload"], idempotency_key=f"docingest-upload-{job.job_id}",
            parameters={"source": self.store.source_uri(job.collection), "collection": job.collection,
                        "options": self._options([job])}))
        job.flow_run_id = str(run.id)
        self._store(job)

    def _watch(self) -> None:
        """One read of the Prefect API for all active jobs: flow run states and progress artifacts; the outcome of a
        completed run from its persisted result."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            ArtifactFilterType,
            FlowRunFilter,
            FlowRunFilterId,
        )

        active = {uuid.UUID(j.flow_run_id): j for j in self._watched()}
        if not active:
            return
        runs, artifacts = [], []
        ids = list(active)
        with get_client(sync_client=True) as client:
            for start in range(0, len(ids), WATCH_PAGE):  # the API returns at most `limit` rows per read
                page = ids[start:start + WATCH_PAGE]
                runs += client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page)),
                                              limit=WATCH_PAGE)
                artifacts += client.read_artifacts(artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=page), type=ArtifactFilterType(any_=["progress"])),
                    limit=2 * WATCH_PAGE)
        progress = {a.flow_run_id: a.data for a in artifacts}
        for run_id in set(active) - {run.id for run in runs}:  # deleted from Prefect: it will never end
            self._finish(active[run_id], "failure", stage="run", error="its flow run was deleted from Prefect")
        for run in runs:
            job = active[run.id]
            kind = run.state.type.value if run.state else "SCHEDULED"
            if kind == "RUNNING":
                value = progress.get(run.id)
                pct = min(99.0, float(value)) if isinstance(value, (int, float)) else job.progress
                if job.state != "running" or pct != job.progress:
                    job.state, job.progress = "running", pct
                    self._store(job)
            elif kind == "COMPLETED":
                self._finish(job, *outcome_from_result(run.state, job.document))  # type: ignore[arg-type]  # it has one
            elif kind in ("FAILED", "CRASHED", "CANCELLED", "CANCELLING"):
                message = ((run.state.message if run.state else None) or kind.lower())[:300]
                self._finish(job, "failure", stage="run", error=f"flow run {kind.lower()}: {message}")

    def close(self, wait: bool = True) -> None:
        """Graceful shutdown: take no new jobs; an embedded run in progress finishes (queued jobs stay on disk and
        run at the next start; in deployment mode they already belong to Prefect)."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if wait:
            self._thread.join()
        self._pool.shutdown(wait=wait, cancel_futures=True)



def outcome_from_result(state: State, document: str) -> tuple[str, str | None, str | None, int, str | None]:
    """(status, change, stage, chunks, error) of ``document`` in a completed flow run, from the run's persisted
    ``IngestResult`` (``state`` as read from the Prefect API)."""
    from docingest.datamodel import IngestResult

    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - storage this process cannot reach, a deleted result file
        return ("failure", None, "result", 0,
                f"the run completed, but its result cannot be read here ({type(exc).__name__}: {str(exc)[:200]}); "
                "give the workers and this service one result storage (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK)")
    outcomes = result.outcomes if isinstance(result, IngestResult) else []
    outcome = next((o for o in outcomes if o.path == document), None)
    if outcome is None:
        return "failure", None, "run", 0, "the run reported no outcome for the document"
    return (outcome.status.value, outcome.change.value if outcome.change else None,
            outcome.stage.value if outcome.stage else None, outcome.chunks, outcome.error)
