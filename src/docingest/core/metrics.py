"""Prometheus metrics of one ingest run, pushed to a Pushgateway.

Flow runs are short-lived processes (a Prefect worker starts one per run, a Kubernetes job is gone when it ends), so
nothing stays up for Prometheus to scrape; the Pushgateway is the store Prometheus scrapes instead. Each run owns a
registry and pushes it (``pushadd``: it replaces the metric families it sends) under the grouping key
``job="docingest", collection, scope`` — every 15 s while it runs and once at the end. So the values describe the
latest run of each (collection, scope); ``docingest_last_success_timestamp_seconds`` is sent only by a run that
succeeded, so a failed run leaves the last success in place. Names and labels are a contract with
docker/grafana/dashboards/docingest.json and the README.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.exposition import pushadd_to_gateway

if TYPE_CHECKING:
    from docingest.datamodel import IngestResult

logger = logging.getLogger(__name__)

JOB = "docingest"
LABELS = ("collection", "scope")
STAGES = ("read", "parse", "chunk", "embed", "upsert", "delete")
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class RunMetrics:
    """The metric families of one run, labelled with its collection and scope."""

    def __init__(self, collection: str, scope: str) -> None:
        self.collection, self.scope = collection, scope
        self.registry = r = CollectorRegistry()
        self.started = time.time()
        self.documents = Gauge("docingest_documents_total", "Documents of the latest run by outcome "
                               "(success, unchanged, skipped, failed, deleted, dead_letter) and failing stage.",
                               [*LABELS, "outcome", "stage"], registry=r)
        self.chunks = Gauge("docingest_chunks_total", "Chunks of the latest run by operation (embedded, upserted, "
                            "deleted).", [*LABELS, "operation"], registry=r)
        self.stage_seconds = Histogram("docingest_stage_duration_seconds", "Seconds per document (read, parse, "
                                       "chunk) or per batch (embed, upsert, delete).", [*LABELS, "stage"],
                                       buckets=STAGE_BUCKETS, registry=r)
        self.batch_size = Histogram("docingest_embed_batch_size", "Chunks per embedding batch.", LABELS,
                                    buckets=BATCH_BUCKETS, registry=r)
        self.chunks_per_s = Gauge("docingest_embed_chunks_per_second", "Embedding throughput of the latest run "
                                  "(chunks embedded / seconds spent embedding).", LABELS, registry=r)
        self.in_flight = Gauge("docingest_documents_in_flight", "Documents submitted for parsing and not yet "
                               "written.", LABELS, registry=r)
        self.failures = Gauge("docingest_failures_total", "Failed documents of the latest run by stage and error "
                              "class.", [*LABELS, "stage", "error_class"], registry=r)
        self.duration = Gauge("docingest_run_duration_seconds", "Wall time of the latest run.", LABELS, registry=r)
        self.status = Gauge("docingest_run_status", "1 if the latest run succeeded (no failed document, not "
                            "aborted), else 0.", LABELS, registry=r)
        self.last_success = Gauge("docingest_last_success_timestamp_seconds", "Unix time the latest successful "
                                  "run ended.", LABELS, registry=None)  # registered only on success
        self._embed_s = 0.0
        self._embedded = 0
        self.stage_totals: dict[str, float] = {}  # seconds per stage, summed (parse/chunk over parallel workers)
        self.in_flight.labels(collection, scope).set(0)

    def _l(self, **extra: str) -> dict[str, str]:
        return {"collection": self.collection, "scope": self.scope, **extra}

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(**self._l(stage=stage)).observe(seconds)
        self.stage_totals[stage] = self.stage_totals.get(stage, 0.0) + seconds

    def observe_embed(self, chunks: int, seconds: float) -> None:
        self.batch_size.labels(**self._l()).observe(chunks)
        self.observe_stage("embed", seconds)
        self._embedded += chunks
        self._embed_s += seconds
        if self._embed_s > 0:
            self.chunks_per_s.labels(**self._l()).set(self._embedded / self._embed_s)

    def set_in_flight(self, n: int) -> None:
        self.in_flight.labels(**self._l()).set(n)

    def finish(self, result: IngestResult, succeeded: bool) -> None:
        """Copy the run's totals from its IngestResult; mark the last success when the run succeeded."""
        d, c = result.documents, result.chunks
        counts: dict[tuple[str, str], int] = {}
        for o in result.outcomes:
            outcome = {"success": "success", "unchanged": "unchanged", "skipped": "skipped",
                       "failure": "failed"}.get(o.status.value, o.status.value)
            stage = o.stage.value if (o.stage and outcome == "failed") else ""
            counts[(outcome, stage)] = counts.get((outcome, stage), 0) + 1
        counts[("deleted", "")] = d.deleted
        counts[("dead_letter", "")] = len(result.dead_letter)
        for outcome in ("success", "unchanged", "skipped"):
            counts.setdefault((outcome, ""), 0)
        for (outcome, stage), n in counts.items():
            self.documents.labels(**self._l(outcome=outcome, stage=stage)).set(n)
        for operation, n in (("embedded", c.embedded), ("upserted", c.upserted), ("deleted", c.deleted)):
            self.chunks.labels(**self._l(operation=operation)).set(n)
        for failure in result.failures:
            self.failures.labels(**self._l(stage=failure.stage, error_class=error_class(failure.error))).inc()
        self.set_in_flight(0)
        self.duration.labels(**self._l()).set(time.time() - self.started)
        self.status.labels(**self._l()).set(1 if succeeded else 0)
        if succeeded:
            self.registry.register(self.last_success)
            self.last_success.labels(**self._l()).set(time.time())


def error_class(error: str) -> str:
    """A short, bounded label for a failure message: its leading word before ':' ("timeout", "ValueError",
    "parser crashed"...), else "error"."""
    head = error.split(":", 1)[0].strip() if ":" in error else ""
    ok = head and len(head) <= 40 and all(ch.isalnum() or ch in " _-" for ch in head)
    return head.replace(" ", "_") if ok else "error"


class Pusher:
    """Pushes a run's registry to the Pushgateway every ``interval_s`` and at ``close``; a push that fails is logged,
    never raised (metrics must not break an ingest)."""

    def __init__(self, metrics: RunMetrics, gateway: str | None, interval_s: float = 15.0) -> None:
        self.metrics, self.gateway, self.interval_s = metrics, gateway, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        if gateway:
            self._thread = threading.Thread(target=self._loop, name="docingest-metrics", daemon=True)
            self._thread.start()

    def push(self) -> bool:
        if not self.gateway:
            return False
        try:
            pushadd_to_gateway(self.gateway, job=JOB, registry=self.metrics.registry, timeout=10,
                               grouping_key={"collection": self.metrics.collection, "scope": self.metrics.scope})
            return True
        except Exception as exc:  # noqa: BLE001
            if not self._warned:
                logger.warning("cannot push metrics to %s: %s", self.gateway, exc)
                self._warned = True
            return False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.push()

    def close(self) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.push()
