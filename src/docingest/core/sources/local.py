"""A folder (or a single file) on the local filesystem.

The listing never leaves the source root unless asked to: a symbolic link whose target lies outside the root is
reported as skipped (``--follow-symlinks`` opts in), links inside the root lead to their target's real path (one
document however many links reach it), loops end, and anything that is not a regular file (a FIFO, a socket, a
device, a dangling link) is reported with its reason instead of passed over or opened. A document is parsed from a
private snapshot whose sha256 is checked against the hash the plan recorded, so the bytes parsed are the bytes hashed.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import hashlib
import os
import re
import stat as stat_module
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from docingest.core.ids import sha256_file
from docingest.core.sources.names import local_name
from docingest.datamodel import SourceDocument
from docingest.exceptions import ConfigurationError, SourceError
from docingest.options import SourceOptions

OUTSIDE_REASON = "symlink points outside the source"


def matches(rel: str, patterns: list[str]) -> bool:
    """Whether a path relative to the source root matches any of the include/exclude glob patterns (fnmatch's, where
    "*" crosses "/", and "**/" also matches the top level)."""
    literal, globs = _compiled(tuple(patterns))
    return rel in literal or (globs is not None and globs.match(rel) is not None)


@functools.lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> tuple[frozenset[str], re.Pattern[str] | None]:
    """The patterns as the exact paths among them and one regular expression of the others: a live batch narrows a
    run to hundreds of paths, and a folder of thousands was matched against each (0.13 s a pass for 1,200 paths and
    221 patterns; a set lookup and one match per path instead)."""
    literal = frozenset(p for p in patterns if not _GLOB_CHARS.search(p))
    globs = [q for p in patterns if p not in literal for q in ((p, p[3:]) if p.startswith("**/") else (p,))]
    return literal, re.compile("|".join(fnmatch.translate(q) for q in globs)) if globs else None


_GLOB_CHARS = re.compile(r"[*?\[]")


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


def special_kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is, in a user's words (None for a regular file or a folder)."""
    for test, name in ((stat_module.S_ISFIFO, "a FIFO (named pipe)"), (stat_module.S_ISSOCK, "a socket"),
                       (stat_module.S_ISCHR, "a character device"), (stat_module.S_ISBLK, "a block device")):
        if test(mode):
            return name
    if stat_module.S_ISREG(mode) or stat_module.S_ISDIR(mode):
        return None
    return "not a regular file"


def within(path: str, root: str) -> bool:
    """Whether the real path ``path`` is ``root`` or lies under it (both absolute and resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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
        self._real: dict[str, str] = {}  # document path -> the real file it was listed from (links followed)

    # -- listing -----------------------------------------------------------------------------------------------
    def _wanted(self, rel: str) -> bool:
        if any(part.startswith(".") for part in rel.split("/")):
            return False
        return matches(rel, self.options.include) and not matches(rel, self.options.exclude)

    def _entries(self) -> Iterator[tuple[str, str | None, str | None]]:
        """(relative path, real file path or None, skip reason or None) for every entry the walk meets, in order."""
        root = str(self.root)
        if self.root.is_file():
            yield self.root.name, root, None
            return
        seen_files: set[str] = set()  # real paths: a file reached through links is listed once
        seen_dirs: set[tuple[int, int]] = set()
        follow = self.options.follow_symlinks

        def walk(folder: str, rel_folder: str) -> Iterator[tuple[str, str | None, str | None]]:
            try:
                st = os.stat(folder)
            except OSError:
                return
            if (st.st_dev, st.st_ino) in seen_dirs:
                return  # reached again through a link: listed once (this also ends loops)
            seen_dirs.add((st.st_dev, st.st_ino))
            try:
                with os.scandir(folder) as it:
                    names = sorted(entry.name for entry in it)
            except OSError as exc:
                if rel_folder:
                    yield rel_folder, None, f"cannot list the folder: {exc.strerror or exc}"
                return
            for name in names:
                if name.startswith("."):
                    continue
                full = os.path.join(folder, name)
                rel = f"{rel_folder}/{name}" if rel_folder else name
                yield from visit(full, rel)

        def visit(full: str, rel: str) -> Iterator[tuple[str, str | None, str | None]]:
            try:
                lst = os.lstat(full)
            except OSError:
                return  # vanished between the folder's listing and now
            if stat_module.S_ISLNK(lst.st_mode):
                real = os.path.realpath(full)
                try:
                    st = os.stat(full)
                except OSError as exc:
                    if self._wanted(rel):
                        loop = exc.errno == errno.ELOOP
                        yield rel, None, "symlink loop" if loop else "dangling symlink (its target does not exist)"
                    return
                inside = within(real, root)
                if not inside and not follow:
                    if self._wanted(rel):
                        yield rel, None, OUTSIDE_REASON
                    return
                if inside:
                    # A link inside the root is its target: listed once, under the target's real path.
                    target_rel = os.path.relpath(real, root).replace(os.sep, "/")
                    if stat_module.S_ISDIR(st.st_mode):
                        yield from walk(real, "" if target_rel == "." else target_rel)
                    else:
                        yield from file_entry(real, target_rel, st)
                    return
                if stat_module.S_ISDIR(st.st_mode):
                    yield from walk(real, rel)
                else:
                    yield from file_entry(real, rel, st)
                return
            if stat_module.S_ISDIR(lst.st_mode):
                yield from walk(full, rel)
                return
            yield from file_entry(full, rel, lst)

        def file_entry(real: str, rel: str, st: os.stat_result) -> Iterator[tuple[str, str | None, str | None]]:
            if not self._wanted(rel):
                return
            if real in seen_files:
                return
            seen_files.add(real)
            kind = special_kind(st.st_mode)
            if kind is not None:
                yield rel, None, f"{kind}: only regular files are read"
                return
            yield rel, real, None

        yield from walk(root, "")

    def iter_documents(self) -> Iterator[SourceDocument]:
        for rel, real, reason in self._entries():
            uri = Path(real).as_uri() if real else (self.root / rel).as_uri()
            doc = SourceDocument(source_uri=self.uri, path=rel, uri=uri, size=0, content_hash="")
            if reason is not None:
                doc.skip_reason = reason
                yield doc
                continue
            assert real is not None  # a file without a skip reason has its real path
            self._real[rel] = real
            try:
                doc.size, doc.content_hash = file_hash(Path(real))
            except OSError as exc:  # one unreadable file is that file's failure, not the run's
                doc.error = f"cannot read {rel}: {exc.strerror or exc}"
            yield doc

    # -- reading -----------------------------------------------------------------------------------------------
    def _resolve(self, doc: SourceDocument) -> Path:
        if self.root.is_file():
            return self.root
        real = self._real.get(doc.path)
        if real is not None:
            return Path(real)
        # Not listed by this object (a worker got the document from elsewhere): resolve it under the same rules.
        path = os.path.realpath(self.root / doc.path)
        if not within(path, str(self.root)) and not self.options.follow_symlinks:
            raise SourceError(f"cannot read {doc.path}: {OUTSIDE_REASON}")
        return Path(path)

    @contextmanager
    def local_path(self, doc: SourceDocument) -> Iterator[Path]:
        """A private snapshot of the document's bytes, checked against the hash recorded when it was listed: a file
        rewritten since then fails as changed-during-read (the next run picks the new bytes up), so the hash in the
        manifest is always the hash of the bytes that were parsed."""
        path = self._resolve(doc)
        with tempfile.TemporaryDirectory(prefix="docingest-local-") as tmp:
            target = Path(tmp) / local_name(doc.path)  # the document's name: its extension tells the format
            digest = hashlib.sha256()
            try:
                st = os.stat(path)
                kind = special_kind(st.st_mode)
                if kind is not None or stat_module.S_ISDIR(st.st_mode):
                    raise SourceError(f"cannot read {doc.path}: {kind or 'a folder'}, not a regular file")
                flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # never blocks, even if a FIFO took its place
                fd = os.open(path, flags)
                with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
                    if not stat_module.S_ISREG(os.fstat(src.fileno()).st_mode):
                        raise SourceError(f"cannot read {doc.path}: not a regular file")
                    while block := src.read(1 << 20):
                        digest.update(block)
                        dst.write(block)
            except FileNotFoundError:
                raise SourceError(f"document vanished: {doc.path}") from None
            except OSError as exc:
                raise SourceError(f"cannot read {doc.path}: {exc.strerror or exc}") from None
            if doc.content_hash and digest.hexdigest() != doc.content_hash:
                raise SourceError(f"{doc.path} changed while it was being read; left for the next run")
            yield target

