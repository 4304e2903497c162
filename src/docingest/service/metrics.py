"""The service's Prometheus registry: upload and job counters, and requests by route template, method and status
class (prometheus-fastapi-instrumentator). Every label comes from a fixed set (the app's route templates, a list of
methods, five status classes), so no client can grow the series: an unknown path is ``none``, an odd method
``OTHER``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from fastapi import FastAPI
    from prometheus_fastapi_instrumentator.metrics import Info

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.uploads = Counter("docingest_uploads_total", "Uploads by outcome.", ["outcome"], registry=r)
        self.bytes = Counter("docingest_upload_bytes_total", "Bytes received in parts.", registry=r)
        self.parts = Counter("docingest_upload_parts_total", "Parts received.", registry=r)
        self.md5 = Counter("docingest_upload_md5_rejects_total", "Parts rejected for a Content-MD5 mismatch.",
                           registry=r)
        self.jobs = Gauge("docingest_jobs", "Jobs by state.", ["state"], registry=r)
        self.runs = Gauge("docingest_job_runs", "Embedded flow runs in progress (0 in deployment mode).", registry=r)
        self.requests = Counter("docingest_service_http_requests_total", "Requests by route template, method and "
                                "status class.", ["handler", "method", "status"], registry=r)
        self.latency = Histogram("docingest_service_http_request_duration_seconds", "Request latency by route "
                                 "template.", ["handler"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

    def instrument(self, app: FastAPI) -> None:
        """prometheus-fastapi-instrumentator with our own recording function: its default one labels by the raw
        method, which a client chooses freely."""
        from prometheus_fastapi_instrumentator import Instrumentator

        def record(info: Info) -> None:
            method = info.method if info.method in METHODS else "OTHER"
            self.requests.labels(info.modified_handler, method, info.modified_status).inc()
            self.latency.labels(info.modified_handler).observe(info.modified_duration)

        Instrumentator(should_group_status_codes=True, should_group_untemplated=True, excluded_handlers=["/metrics"],
                       registry=self.registry).add(record).instrument(app)
