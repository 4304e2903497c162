"""What a run shows in the Prefect UI: a progress artifact with counts, a Markdown summary and an outcomes table."""

from __future__ import annotations

import re
import time
from typing import cast
from uuid import UUID

from prefect import get_run_logger

from docingest.datamodel import (
    DocumentStatus,
    IngestResult,
)

TABLE_ROWS = 1000  # per-document rows in the outcomes table artifact (failures come first, so none is cut)


_PROGRESS_ARTIFACTS: dict[str, UUID] = {}  # flow run id -> its progress artifact: a retried run reuses it


class ProgressArtifact:
    """The flow run's Prefect progress artifact ("37 of 60 documents, 2 failed"), updated as documents finish (at most
    once a second); one per flow run, also when Prefect retries the run. It is created at the first update a second
    into the run, or at the last one: a run of a few documents (a watch's batch, an upload) makes one API call for it,
    not three (measured: two calls were ~0.13 s of a ~0.45 s one-document batch on the temporary API)."""

    def __init__(self, collection: str, total: int, flow_run_id: str = "") -> None:
        self.collection, self.total, self.flow_run_id = collection, total, flow_run_id
        self.started = self.last = time.monotonic()
        self.id: UUID | None = _PROGRESS_ARTIFACTS.get(flow_run_id) if flow_run_id else None
        self.failed = False
        if self.id is not None:  # a retry of the same flow run starts its count again on the same artifact
            self._send(0, 0)

    def _describe(self, done: int, failed: int) -> str:
        return f"{done:,} of {self.total:,} documents, {failed:,} failed ({self.collection})"

    def update(self, done: int, failed: int = 0, final: bool = False) -> None:
        now = time.monotonic()
        if self.failed or (not final and now - self.last < 1.0):
            return
        self.last = now
        self._send(done, failed)

    def _send(self, done: int, failed: int) -> None:
        progress = 100.0 * done / self.total if self.total else 100.0
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            if self.id is None:
                self.id = cast(UUID, create_progress_artifact(  # called from sync code: the UUID, not a coroutine
                    progress=progress, key=artifact_key(self.collection, "progress"),
                    description=self._describe(done, failed)))
                if self.flow_run_id:
                    _PROGRESS_ARTIFACTS[self.flow_run_id] = self.id
            else:
                update_progress_artifact(self.id, progress=progress, description=self._describe(done, failed))
        except Exception as exc:  # noqa: BLE001 - reporting must never fail a sync
            self.failed = True
            get_run_logger().warning("could not create or update the progress artifact: %s", exc)


def artifact_key(collection: str, suffix: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", collection.lower()).strip("-") or "collection"
    return f"docingest-{slug}-{suffix}"


def publish_artifacts(collection: str, result: IngestResult) -> None:
    """Markdown summary and failures table, under keys stable per collection so the latest is easy to find."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    d, c = result.documents, result.chunks
    lines = [
        f"# Ingest into `{collection}`",
        f"Source `{result.source}`, mode **{result.mode}**, {result.duration_s:.1f} s"
        + (f" — **aborted**: {result.aborted}" if result.aborted else ""),
        "",
        "| seen | new | changed | unchanged | deleted | skipped | failed | dead letter |",
        "|---|---|---|---|---|---|---|---|",
        f"| {d.seen} | {d.new} | {d.changed} | {d.unchanged} | {d.deleted} | {d.skipped} | {d.failed} "
        f"| {len(result.dead_letter)} |",
        "",
        f"Chunks: {c.embedded} embedded, {c.upserted} upserted, {c.deleted} deleted.",
    ]
    if result.duration_s > 0 and c.embedded:
        lines.append(f"Throughput: {c.embedded / result.duration_s:.1f} chunks/s.")
    try:
        create_markdown_artifact(key=artifact_key(collection, "summary"), markdown="\n".join(lines),
                                 description=f"Latest docingest run on {collection}")
        order = {DocumentStatus.FAILURE: 0, DocumentStatus.SKIPPED: 1, DocumentStatus.SUCCESS: 2,
                 DocumentStatus.UNCHANGED: 3}
        outcomes = sorted(result.outcomes, key=lambda o: (order[o.status], o.path))
        rows = [{"document": o.source, "status": o.status.value, "change": o.change.value if o.change else "",
                 "stage": o.stage.value if o.stage else "", "chunks": o.chunks, "error": o.error or ""}
                for o in outcomes[:TABLE_ROWS]]
        if len(outcomes) > TABLE_ROWS:
            rows.append({"document": f"... {len(outcomes) - TABLE_ROWS} more (see the run's JSON result)",
                         "status": "", "change": "", "stage": "", "chunks": 0, "error": ""})
        create_table_artifact(key=artifact_key(collection, "documents"), table=rows or [
                              {"document": "", "status": "no documents", "change": "", "stage": "", "chunks": 0,
                               "error": ""}],
                              description=f"Per-document outcomes of the latest run on {collection}: failures "
                              "first, then skipped, ingested, unchanged")
    except Exception as exc:  # noqa: BLE001 - reporting must never fail a finished sync
        get_run_logger().warning("could not publish artifacts: %s", exc)

