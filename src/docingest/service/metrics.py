"""The service's Prometheus registry: upload and job counters, and request latency per route template
(prometheus-fastapi-instrumentator)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


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

    def instrument(self, app) -> None:
        """Request latency and counts labelled by route template (never a raw path), method and status class."""
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator(registry=self.registry, should_group_status_codes=True, should_group_untemplated=True,
                       excluded_handlers=["/metrics"]).instrument(app, metric_namespace="docingest",
                                                                  metric_subsystem="service")
