"""A run's accumulator: per-document outcomes into the typed result, progress events and the circuit breaker.

Free of Prefect (the progress artifact is optional), so the CLI can build the result of a re-sync that has nothing to
write without starting a flow run (``flows.planning.nothing_to_write``)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from docingest.core import progress
from docingest.datamodel import (
    ChangeKind,
    DocumentOutcome,
    DocumentStatus,
    FailureItem,
    IngestResult,
    PreparedDocument,
    SkippedItem,
    Stage,
)
from docingest.options import IngestOptions

if TYPE_CHECKING:
    from docingest.flows.artifacts import ProgressArtifact


class Run:
    """Accumulates per-document outcomes into the typed result and reports progress."""

    def __init__(self, collection: str, source: str, total: int,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self.logger = logger
        self.result = IngestResult(collection=collection, source=source)
        self.result.documents.seen = total
        self.total = total
        self.artifact: ProgressArtifact | None = None
        self.done = 0
        # For the circuit breaker, counted where each outcome is first known: parse/chunk outcomes as documents are
        # taken (the writer's pools may lag behind), embed/upsert failures as the writer's pools finish.
        self.taken = self.taken_failed = self.late_failed = 0
        self._lock = threading.RLock()  # outcomes may be recorded from more than one thread (the Python API's callers)

    def took(self, prepared: PreparedDocument) -> None:
        """A document handed over by its parse task (parsed, or failed there): counted for the circuit breaker."""
        if prepared.status in (DocumentStatus.SUCCESS, DocumentStatus.FAILURE):
            self.taken += 1
            self.taken_failed += prepared.status is DocumentStatus.FAILURE

    def trip(self, options: IngestOptions) -> str | None:
        """Stop the run (``result.aborted``) if the circuit breaker trips now; the reason, the first time only."""
        if self.result.aborted or (reason := self.tripped(options)) is None:
            return None
        self.result.aborted = reason
        return reason

    def tripped(self, options: IngestOptions) -> str | None:
        """The circuit breaker: a reason to stop when too many of the documents processed so far failed."""
        n, failed = self.taken, self.taken_failed + self.late_failed
        if n >= options.breaker_min_docs and failed / n > options.max_failure_ratio:
            return (f"circuit breaker: {failed} of {n} processed documents failed "
                    f"({failed / n:.0%} > max_failure_ratio {options.max_failure_ratio:g}); "
                    "stopped submitting new documents")
        return None

    def record(self, outcome: DocumentOutcome, processed: bool = True) -> None:
        with self._lock:
            self._record(outcome, processed)

    def _record(self, outcome: DocumentOutcome, processed: bool) -> None:
        counts = self.result.documents
        self.result.outcomes.append(outcome)
        if processed and outcome.status is DocumentStatus.FAILURE and outcome.stage in (Stage.EMBED, Stage.UPSERT):
            self.late_failed += 1
        if outcome.status is DocumentStatus.SKIPPED:
            counts.skipped += 1
            self.result.skipped.append(SkippedItem(source=outcome.source, path=outcome.path,
                                                   reason=outcome.error or ""))
            if self.logger is not None:  # one WARNING line per document left out, with its reason
                self.logger.warning("skipped %s: %s", outcome.path, outcome.error)
        else:
            kind = outcome.change or ChangeKind.NEW
            setattr(counts, kind.value, getattr(counts, kind.value) + 1)
        self.result.pages += outcome.pages
        if outcome.status is DocumentStatus.FAILURE:
            counts.failed += 1
            stage = outcome.stage.value if outcome.stage else "unknown"
            self.result.failures.append(FailureItem(source=outcome.source, path=outcome.path, stage=stage,
                                                    error=outcome.error or ""))
            if self.logger is not None:  # one WARNING line per failed document, with its stage and reason
                self.logger.warning("failed %s at %s: %s", outcome.path, stage, outcome.error)
        self.done += 1
        if self.artifact is not None:
            self.artifact.update(self.done, counts.failed, final=self.done == self.total)
        progress.emit(progress.ProgressEvent(self.done, self.total, outcome.path, outcome.status.value,
                                            outcome.source, outcome))
