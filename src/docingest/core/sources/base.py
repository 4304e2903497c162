"""The source protocol every document store implements (local folder now; S3 and git plug in here)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

from docingest.datamodel import SourceDocument
from docingest.exceptions import ConfigurationError
from docingest.options import SourceOptions


@runtime_checkable
class Source(Protocol):
    """A store of documents with a stable URI that scopes its documents in a collection."""

    uri: str

    def iter_documents(self) -> Iterator[SourceDocument]:
        """Yield every document in the source, with its content hash, in a stable order."""
        ...

    def local_path(self, doc: SourceDocument) -> AbstractContextManager[Path]:
        """A local file holding the document's bytes for the duration of the context."""
        ...


def open_source(source: str, options: SourceOptions | None = None) -> Source:
    """Open a source from its CLI/flow string. Raises ConfigurationError for an unusable source."""
    from docingest.core.sources.local import LocalFolderSource

    options = options or SourceOptions()
    if "://" in source and not source.startswith("file://"):
        scheme = source.split("://", 1)[0]
        raise ConfigurationError(f"unsupported source scheme {scheme!r}: use a local folder or file:// path")
    path = Path(source.removeprefix("file://")).expanduser()
    return LocalFolderSource(path, options)
