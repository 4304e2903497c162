"""A folder (or a single file) on the local filesystem."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
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


_HASHES: OrderedDict[str, tuple[tuple[int, int, int, int], str]] = OrderedDict()
_HASHES_MAX = 100_000
_HASHES_LOCK = threading.Lock()
_RACY_NS = 2_000_000_000  # a file changed this close to its hashing may change again within the same timestamp


def file_hash(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file. This process remembers the hash of a file whose inode, size, mtime and ctime are
    unchanged since it was read (as git's index does), so one run that lists a folder twice (the CLI's plan before
    the flow's) reads each file once; a file modified less than 2 s before it was hashed is read again next time."""
    stat = os.stat(path)
    key = str(path)
    signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _HASHES_LOCK:
        known = _HASHES.get(key)
    if known is not None and known[0] == signature:
        return stat.st_size, known[1]
    started = time.time_ns()
    digest = sha256_file(path)
    if max(stat.st_mtime_ns, stat.st_ctime_ns) < started - _RACY_NS:
        with _HASHES_LOCK:
            _HASHES[key] = (signature, digest)
            _HASHES.move_to_end(key)
            while len(_HASHES) > _HASHES_MAX:
                _HASHES.popitem(last=False)
    return stat.st_size, digest


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
                doc.size, doc.content_hash = file_hash(path)
            except OSError as exc:  # one unreadable file is that file's failure, not the run's
                doc.error = f"cannot read {rel}: {exc.strerror or exc}"
            yield doc

    @contextmanager
    def local_path(self, doc: SourceDocument) -> Iterator[Path]:
        path = self.root if self.root.is_file() else self.root / doc.path
        if not path.is_file():
            raise SourceError(f"document vanished: {path}")
        yield path
