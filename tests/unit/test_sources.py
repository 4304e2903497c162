import pytest

from docingest.core.sources import LocalFolderSource, open_source
from docingest.exceptions import ConfigurationError
from docingest.options import SourceOptions

pytestmark = pytest.mark.unit


def make_tree(root):
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.md").write_text("# A")
    (root / "sub" / "b.md").write_text("# B")
    (root / "sub" / "c.txt").write_text("c")
    (root / ".hidden.md").write_text("h")
    (root / ".git" / "config").write_text("x")
    return root


def test_lists_files_sorted_with_relative_posix_paths_and_hashes(tmp_path):
    src = LocalFolderSource(make_tree(tmp_path / "docs"))
    docs = list(src.iter_documents())
    assert [d.path for d in docs] == ["a.md", "sub/b.md", "sub/c.txt"]  # hidden files and folders left out
    assert all(len(d.content_hash) == 64 and d.source_uri == src.uri for d in docs)
    assert docs[0].uri.endswith("/docs/a.md") and docs[0].size == 3


def test_include_and_exclude_globs(tmp_path):
    root = make_tree(tmp_path / "docs")
    only_md = LocalFolderSource(root, SourceOptions(include=["**/*.md"]))
    assert [d.path for d in only_md.iter_documents()] == ["a.md", "sub/b.md"]
    no_sub = LocalFolderSource(root, SourceOptions(exclude=["sub/*"]))
    assert [d.path for d in no_sub.iter_documents()] == ["a.md"]


def test_single_file_is_its_own_scope(tmp_path):
    root = make_tree(tmp_path / "docs")
    src = open_source(str(root / "a.md"))
    docs = list(src.iter_documents())
    assert [d.path for d in docs] == ["a.md"]
    assert src.uri.endswith("/docs/a.md")  # scope is the file, not its folder


def test_missing_source_and_unknown_scheme_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="not found"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(ConfigurationError, match="scheme"):
        open_source("ftp://example/x")
    assert open_source((tmp_path).as_uri()).root == tmp_path.resolve()


def test_file_hash_is_remembered_only_while_the_file_is_unchanged(tmp_path, monkeypatch):
    """A folder listed twice in one process (the CLI's plan, then the flow) reads each file once; any change (even
    one that keeps the size and the mtime) is read again, and a file changed just before it was hashed is never
    trusted (it could change again within the same timestamp)."""
    import hashlib
    import os
    import time
    import types

    from docingest.core.sources import local

    reads = []
    real = local.sha256_file
    monkeypatch.setattr(local, "sha256_file", lambda p: reads.append(p) or real(p))
    later = types.SimpleNamespace(time_ns=lambda: time.time_ns() + 60_000_000_000)
    path = tmp_path / "doc.md"
    path.write_text("# old")

    local.file_hash(path)
    local.file_hash(path)
    assert reads == [path, path]  # just written: racy, read every time

    monkeypatch.setattr(local, "time", later)  # the same file, hashed a minute after it was written
    assert local.file_hash(path) == (5, hashlib.sha256(b"# old").hexdigest())
    assert local.file_hash(path)[1] == hashlib.sha256(b"# old").hexdigest()
    assert len(reads) == 3  # the second call used the remembered hash

    stat = path.stat()
    path.write_text("# new")  # same size, new bytes
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime restored: ctime moved
    assert local.file_hash(path)[1] == hashlib.sha256(b"# new").hexdigest()
    assert len(reads) == 4


def test_iter_documents_uses_the_remembered_hashes(tmp_path):
    root = make_tree(tmp_path / "docs")
    first = [(d.path, d.size, d.content_hash) for d in LocalFolderSource(root).iter_documents()]
    (root / "a.md").write_text("# A, changed")
    second = {d.path: d.content_hash for d in LocalFolderSource(root).iter_documents()}
    assert second["sub/b.md"] == dict((p, h) for p, _, h in first)["sub/b.md"]
    assert second["a.md"] != dict((p, h) for p, _, h in first)["a.md"]


def test_s3_clients_retry_through_their_own_configuration(monkeypatch):
    """minio sends through a urllib3 pool whose Retry holds DOCINGEST_S3_ATTEMPTS (connection, read and 429/5xx
    errors, bounded exponential backoff) and DOCINGEST_S3_TIMEOUT_S; nothing in docingest loops."""
    from docingest.core.sources import s3 as s3_module
    from docingest.settings import get_settings

    pool = s3_module.retrying_http(4, 7.5)
    retry = pool.connection_pool_kw["retries"]
    assert (retry.total, retry.connect, retry.read, retry.status) == (3, 3, 3, 3)
    assert set(retry.status_forcelist) == {429, 500, 502, 503, 504} and not retry.respect_retry_after_header
    assert {"GET", "HEAD", "PUT"} <= retry.allowed_methods and "POST" not in retry.allowed_methods  # idempotent only
    timeout = pool.connection_pool_kw["timeout"]
    assert (timeout.connect_timeout, timeout.read_timeout) == (7.5, 7.5)

    made = []
    monkeypatch.setattr(s3_module, "retrying_http", lambda *args: made.append(args) or pool)
    monkeypatch.setenv("DOCINGEST_S3_ATTEMPTS", "4")
    monkeypatch.setenv("DOCINGEST_S3_TIMEOUT_S", "7.5")
    get_settings.cache_clear()
    try:
        _, endpoint = s3_module.make_client("http://127.0.0.1:9", "k", "s")
    finally:
        get_settings.cache_clear()
    assert endpoint == "127.0.0.1:9" and made == [(4, 7.5)]
