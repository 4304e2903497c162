"""The source protocol every document store implements (local folder now; S3 and git plug in here)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from docingest.datamodel import SourceDocument
from docingest.exceptions import ConfigurationError
from docingest.options import SourceOptions

if TYPE_CHECKING:
    from docingest.settings import DocingestSettings


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


def open_source(source: str, options: SourceOptions | None = None, settings: DocingestSettings | None = None) -> Source:
    """Open a source from its CLI/flow string: a local path or file:// URI, s3://bucket/prefix, or a git URL
    (``*.git``, ``git+…``, or any URL with ``git_ref``/``git_path`` set). Raises ConfigurationError when unusable."""
    from docingest.core.sources.git import GitSource, is_git_url
    from docingest.core.sources.local import LocalFolderSource
    from docingest.core.sources.s3 import S3Source
    from docingest.settings import get_settings

    options = options or SourceOptions()
    settings = settings or get_settings()
    secret = lambda s: s.get_secret_value() if s else None  # noqa: E731
    if source.startswith("s3://"):
        return S3Source(source, options, endpoint=settings.s3.endpoint, access_key=secret(settings.s3.access_key),
                        secret_key=secret(settings.s3.secret_key), region=settings.s3.region)
    if is_git_url(source) or options.git_ref or options.git_path:
        return GitSource(source, options.git_ref or "HEAD", options.git_path or "", options,
                         token=secret(settings.git.token), cache_dir=settings.home / "git")
    if "://" in source and not source.startswith("file://"):
        scheme = source.split("://", 1)[0]
        raise ConfigurationError(f"unsupported source scheme {scheme!r}: use a folder, file://, s3:// or a git URL")
    path = Path(source.removeprefix("file://")).expanduser()
    return LocalFolderSource(path, options)
