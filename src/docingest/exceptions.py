"""Exceptions raised by docingest.

Per-document problems during a run are *not* raised to the caller: they become
:class:`~docingest.datamodel.DocumentOutcome` entries. These classes are raised by the
stage functions (and caught by the flow), or by entry points for configuration errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from docingest.datamodel import IngestResult


class DocingestError(Exception):
    """Root of every docingest error."""


class ConfigurationError(DocingestError, ValueError):
    """Raised before any work when settings, options or a target are invalid (CLI exit code 2)."""


class SourceError(DocingestError, OSError):
    """Raised when a source cannot be listed or a document cannot be read."""


class UnsupportedDocumentError(DocingestError):
    """Raised when a document has a type docingest cannot process here; the document is skipped, not failed."""


class ParseError(DocingestError):
    """Raised when Docling cannot convert a document (corrupt, undecodable or failed conversion)."""


class ChunkError(DocingestError):
    """Raised when a converted document cannot be chunked."""


class EnrichError(DocingestError):
    """Raised when an enricher plugin fails on a document's chunks."""


class EmbedError(DocingestError):
    """Raised when the embedding model fails on a batch."""


class StoreError(DocingestError, ConnectionError):
    """Raised when Qdrant cannot be reached or rejects a request; transient, so Prefect retries it."""


class UnknownCollectionError(ConfigurationError):
    """Raised for a collection that does not exist."""


class StoreBusyError(ConfigurationError):
    """Raised when another process holds the embedded store (one process at a time opens it)."""


class DeleteGuardError(ConfigurationError):
    """Raised before any work when a full sync would delete more of a scope than ``max_delete_ratio`` allows."""


class ClusterUnreachable(ConfigurationError):
    """Raised before anything is written when the Dask scheduler of ``--task-runner dask`` cannot be reached (a wrong
    or unreachable ``--dask-address`` / DOCINGEST_DASK_ADDRESS)."""


class ClusterError(DocingestError, RuntimeError):
    """Raised when the Dask cluster cannot do a run's work: it had no worker for longer than
    DOCINGEST_DASK_WORKER_WAIT_S (every worker left, or none joined). What the run wrote before is complete."""


class CircuitBreakerOpen(DocingestError):
    """Raised at the end of a run stopped early because too many documents failed; ``result`` holds what was done."""

    def __init__(self, message: str, result: IngestResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class CrashRetriesExhausted(DocingestError):
    """A deployment run that crashed more often than DOCINGEST_CRASH_RETRIES is not started again."""
