"""A folder (or a single file) on the local filesystem."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from docingest.core.ids import sha256_file
from docingest.datamodel import SourceDocument
from docingest.exceptions import ConfigurationError, SourceError
from docingest.options import SourceOptions


def _matches(rel: str, patterns: list[str]) -> bool:
    # "**/*" style globs: fnmatch's "*" already crosses "/", and "**/" must also match the top level.
    return any(fnmatch(rel, p) or (p.startswith("**/") and fnmatch(rel, p[3:])) for p in patterns)


class LocalFolderSource:
    """Documents under a local folder; a single file is a source of its own."""

    def __init__(self, root: Path, options: SourceOptions | None = None) -> None:
        self.options = options or SourceOptions()
        root = root.resolve()
        if not root.exists():
            raise ConfigurationError(f"source not found: {root}")
        if not (root.is_dir() or root.is_file()):
            raise ConfigurationError(f"source is neither a folder nor a file: {root}")
        self.root = root
        self.uri = root.as_uri()

    def _files(self) -> Iterator[tuple[Path, str]]:
        if self.root.is_file():
            yield self.root, self.root.name
            return
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            if not path.is_file():
                continue
            if not _matches(rel, self.options.include) or _matches(rel, self.options.exclude):
                continue
            yield path, rel

    def iter_documents(self) -> Iterator[SourceDocument]:
        for path, rel in self._files():
            doc = SourceDocument(source_uri=self.uri, path=rel, uri=path.as_uri(), size=0, content_hash="")
            try:
                doc.size = path.stat().st_size
                doc.content_hash = sha256_file(path)
            except OSError as exc:  # one unreadable file is that file's failure, not the run's
                doc.error = f"cannot read {rel}: {exc.strerror or exc}"
            yield doc

    @contextmanager
    def local_path(self, doc: SourceDocument) -> Iterator[Path]:
        path = self.root if self.root.is_file() else self.root / doc.path
        if not path.is_file():
            raise SourceError(f"document vanished: {path}")
        yield path
