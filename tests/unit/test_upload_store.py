"""Upload storage: sanitizing names, sniffing types, parts with MD5, resume, assembly, isolation, expiry."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from docingest.service.uploads import UploadError, UploadStore, sanitize_filename

pytestmark = pytest.mark.unit


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture
def store(tmp_path):
    return UploadStore(tmp_path, part_size=4, max_bytes=100, allowed={"md", "pdf", "docx"}, expiry_s=60)


@pytest.mark.parametrize(("name", "safe"), [
    ("../../etc/passwd.md", "passwd.md"),
    ("..\\..\\win.ini.md", "win.ini.md"),
    ("a\x00b\x07c.md", "abc.md"),
    ("  ..  ", "upload"),
    ("report<script>.pdf", "report_script_.pdf"),
    ("x" * 300 + ".md", "x" * 197 + ".md"),
    ("漢" * 90 + ".md", "漢" * 65 + ".md"),  # 270 bytes of UTF-8 cut to 198: names are bytes on disk (255 at most)
    ("ü" * 150, "ü" * 100),
])
def test_sanitize_filename(name, safe):
    assert sanitize_filename(name) == safe
    assert len(safe.encode()) <= 200


def test_a_long_cjk_name_completes_and_is_stored(store):
    data = b"# t\n"
    meta = store.create("alice", "漢" * 90 + ".md", len(data), "", "kb", "normal")
    store.put_part("alice", meta.upload_id, 1, data, md5(data))
    _, document = store.complete("alice", meta.upload_id, None)
    assert (Path(store.source_uri("kb")) / document).read_bytes() == data


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name)


def test_every_failure_path_removes_its_temporary_files(store, tmp_path, monkeypatch):
    data = b"# hello world\n"
    meta = store.create("alice", "n.md", len(data), "", "kb", "normal")
    real_write, real_replace = Path.write_bytes, Path.replace

    def full_disk(self, *args, **kwargs):
        real_write(self, b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError):
        store.put_part("alice", meta.upload_id, 1, data[:4], md5(data[:4]))
    monkeypatch.setattr(Path, "write_bytes", real_write)
    assert leftovers(tmp_path) == []
    for n in range(1, meta.parts + 1):
        part = data[(n - 1) * 4: n * 4]
        store.put_part("alice", meta.upload_id, n, part, md5(part))

    def no_rename(self, target):
        if ".tmp-" in self.name and "assembled" in self.name:
            raise OSError(36, "File name too long")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", no_rename)
    for _ in range(3):  # every retry of a failing completion: no copy of the assembled file stays behind
        with pytest.raises(UploadError) as err:
            store.complete("alice", meta.upload_id, None)
        assert err.value.status == 503
        assert leftovers(tmp_path) == []
    monkeypatch.setattr(Path, "replace", real_replace)
    _, document = store.complete("alice", meta.upload_id, None)  # the parts were kept: completing again works
    assert (Path(store.source_uri("kb")) / document).read_bytes() == data

    def broken_meta(self, *args, **kwargs):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(Path, "write_text", broken_meta)
    with pytest.raises(OSError):
        store.create("alice", "m.md", 3, "", "kb", "normal")
    monkeypatch.undo()
    assert leftovers(tmp_path) == []


def test_a_user_s_unfinished_uploads_are_bounded(tmp_path):
    store = UploadStore(tmp_path, part_size=4, max_bytes=100, allowed={"md"}, expiry_s=60, quota_bytes=250,
                        max_unfinished=5)
    first = store.create("alice", "a.md", 100, "", "kb", "normal")
    store.create("alice", "b.md", 100, "", "kb", "normal")
    with pytest.raises(UploadError, match="quota") as over:
        store.create("alice", "c.md", 100, "", "kb", "normal")
    assert over.value.status == 413
    store.create("bob", "c.md", 100, "", "kb", "normal")  # another user's quota is his own
    store.abort("alice", first.upload_id)  # aborting frees the quota
    store.create("alice", "c.md", 100, "", "kb", "normal")
    for name in "defgh":
        try:
            store.create("bob", f"{name}.md", 1, "", "kb", "normal")
        except UploadError as exc:
            assert exc.status == 429 and "unfinished uploads" in exc.message
            break
    else:
        raise AssertionError("the count of unfinished uploads is not bounded")


def test_finished_uploads_metadata_expires_their_documents_stay(store):
    meta = _ready(store)
    _, document = store.complete("alice", meta.upload_id, None)
    meta = store.get("alice", meta.upload_id)
    meta.job_id = "job-1"
    store.save(meta)
    assert store.expire(now=meta.created_at + 61) == 1
    with pytest.raises(UploadError):
        store.get("alice", meta.upload_id)
    assert (Path(store.source_uri("kb")) / document).is_file()
    assert not (store.backend.root / "incoming").exists() or not any((store.backend.root / "incoming").rglob("*"))


def test_forget_removes_everything_of_an_upload(store):
    meta = _ready(store)
    _, document = store.complete("alice", meta.upload_id, None)
    store.forget("alice", meta.upload_id)
    assert not (Path(store.source_uri("kb")) / document).exists()
    with pytest.raises(UploadError):
        store.get("alice", meta.upload_id)
    store.forget("alice", meta.upload_id)  # never raises


def test_parts_md5_resume_and_assembly(store):
    data = b"0123456789"
    meta = store.create("alice", "../n.md", len(data), "text/markdown", "kb", "high")
    assert (meta.parts, meta.filename) == (3, "n.md")
    with pytest.raises(UploadError, match="mismatch") as bad:
        store.put_part("alice", meta.upload_id, 1, b"0123", md5(b"xxxx"))
    assert bad.value.status == 400
    assert store.missing(store.get("alice", meta.upload_id)) == [1, 2, 3]
    with pytest.raises(UploadError, match="must be 4 bytes"):
        store.put_part("alice", meta.upload_id, 1, b"012", md5(b"012"))
    for n, part in enumerate([b"0123", b"4567", b"89"], start=1):
        store.put_part("alice", meta.upload_id, n, part, md5(part))
    store.put_part("alice", meta.upload_id, 3, b"89", md5(b"89"))  # idempotent
    wrong = store.create("alice", "w.md", 4, "", "kb", "normal")
    store.put_part("alice", wrong.upload_id, 1, b"abcd", md5(b"abcd"))
    with pytest.raises(UploadError, match="sha256 mismatch"):
        store.complete("alice", wrong.upload_id, "0" * 64)
    with pytest.raises(UploadError):  # the assembled bytes are not what the client meant: nothing is kept
        store.get("alice", wrong.upload_id)
    assert not (Path(store.source_uri("kb")) / wrong.upload_id / "w.md").exists()
    done, document = store.complete("alice", meta.upload_id, hashlib.sha256(data).hexdigest())
    assert document == f"{meta.upload_id}/n.md" and done.sha256 == hashlib.sha256(data).hexdigest()
    assert (Path(store.source_uri("kb")) / document).read_bytes() == data
    assert store.missing(done) == [] and not list(Path(store.backend.folder(done)).glob("part-*"))
    with pytest.raises(UploadError, match="already completed"):
        store.complete("alice", meta.upload_id, None)


def test_users_never_see_each_others_uploads(store):
    meta = store.create("alice", "a.md", 3, "", "kb", "normal")
    for call in (lambda: store.get("bob", meta.upload_id), lambda: store.abort("bob", meta.upload_id),
                 lambda: store.put_part("bob", meta.upload_id, 1, b"abc", md5(b"abc")),
                 lambda: store.get("alice", "../../etc")):
        with pytest.raises(UploadError) as err:
            call()
        assert err.value.status == 404


def test_limits_and_expiry(store):
    with pytest.raises(UploadError) as too_big:
        store.create("a", "a.md", 101, "", "kb", "normal")
    assert too_big.value.status == 413
    with pytest.raises(UploadError) as wrong_type:
        store.create("a", "a.exe", 1, "", "kb", "normal")
    assert wrong_type.value.status == 415
    with pytest.raises(UploadError, match="priority"):
        store.create("a", "a.md", 1, "", "kb", "urgent")
    with pytest.raises(UploadError, match="collection"):
        store.create("a", "a.md", 1, "", "../kb", "normal")
    old = store.create("a", "a.md", 1, "", "kb", "normal")
    assert store.expire(now=old.created_at + 30) == 0
    assert store.expire(now=old.created_at + 61) == 1
    with pytest.raises(UploadError):
        store.get("a", old.upload_id)


def test_an_executable_is_refused_at_completion_and_removed(store):
    data = b"MZ\x90\x00"
    meta = store.create("a", "report.pdf", len(data), "application/pdf", "kb", "normal")
    store.put_part("a", meta.upload_id, 1, data, md5(data))
    with pytest.raises(UploadError, match="refused: the file is an executable") as err:
        store.complete("a", meta.upload_id, None)
    assert err.value.status == 415
    assert not list(Path(store.source_uri("kb")).rglob("*.pdf"))  # nothing refused stays in the source
    with pytest.raises(UploadError):
        store.get("a", meta.upload_id)


def _ready(store, data: bytes = b"# hello world\n"):
    meta = store.create("alice", "n.md", len(data), "", "kb", "normal")
    for n in range(1, meta.parts + 1):
        part = data[(n - 1) * 4: n * 4]
        store.put_part("alice", meta.upload_id, n, part, md5(part))
    return meta


def test_two_concurrent_completions_assemble_once(store, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    meta = _ready(store)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(store.complete, "alice", meta.upload_id, None) for _ in range(4)]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result()[1])
        except UploadError as exc:
            outcomes.append(exc.status)
    assert sorted(outcomes, key=str) == sorted([409, 409, 409, f"{meta.upload_id}/n.md"], key=str)
    target = tmp_path / "sources" / "kb" / meta.upload_id / "n.md"
    assert target.read_bytes() == b"# hello world\n"
    assert not list((tmp_path / "incoming").rglob("assembled*"))  # no temporary file left behind


def test_a_part_after_an_abort_is_not_written(store, tmp_path):
    meta = store.create("alice", "n.md", 8, "", "kb", "normal")
    store.abort("alice", meta.upload_id)
    with pytest.raises(UploadError) as gone:
        store.put_part("alice", meta.upload_id, 1, b"abcd", md5(b"abcd"))
    assert gone.value.status == 404
    assert not list(tmp_path.rglob("part-*"))


def test_a_store_refusal_discards_the_upload_a_store_failure_keeps_it(store, monkeypatch):
    meta = _ready(store)
    real = store.backend.assemble
    monkeypatch.setattr(store.backend, "assemble", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(UploadError) as failed:
        store.complete("alice", meta.upload_id, None)
    assert failed.value.status == 503 and "retry" in failed.value.message
    monkeypatch.setattr(store.backend, "assemble", real)  # the parts are still there: completing again works
    assert store.complete("alice", meta.upload_id, None)[1] == f"{meta.upload_id}/n.md"

    other = _ready(store)

    def refuse(*_):
        raise UploadError(400, "the store refused to assemble the parts: EntityTooSmall", final=True)

    monkeypatch.setattr(store.backend, "assemble", refuse)
    with pytest.raises(UploadError, match="EntityTooSmall"):
        store.complete("alice", other.upload_id, None)
    with pytest.raises(UploadError) as gone:  # refused parts never complete: the upload is discarded
        store.get("alice", other.upload_id)
    assert gone.value.status == 404


def test_the_upload_source_follows_the_local_listing_rules(store, tmp_path):
    """The service's local store is a local source like any other: a link planted in it is never read, and an
    upload is never written through a link that leads out of the store."""
    from docingest.core.sources import LocalFolderSource
    from docingest.core.sources.local import OUTSIDE_REASON

    data = b"# Notes\n"
    meta = store.create("alice", "n.md", len(data), "text/markdown", "kb", "normal")
    store.put_part("alice", meta.upload_id, 1, data[:4], md5(data[:4]))
    store.put_part("alice", meta.upload_id, 2, data[4:], md5(data[4:]))
    _, document = store.complete("alice", meta.upload_id, None)
    secret = tmp_path / "secret.md"
    secret.write_text("# secret\n")
    folder = Path(store.source_uri("kb"))
    (folder / meta.upload_id / "planted.md").symlink_to(secret)
    listed = {d.path: d.skip_reason for d in LocalFolderSource(folder).iter_documents()}
    assert listed == {document: None, f"{meta.upload_id}/planted.md": OUTSIDE_REASON}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder.parent / "team").symlink_to(elsewhere, target_is_directory=True)
    other = store.create("alice", "o.md", 4, "text/markdown", "team", "normal")
    store.put_part("alice", other.upload_id, 1, b"# o\n", md5(b"# o\n"))
    with pytest.raises(UploadError, match="leads outside the store"):
        store.complete("alice", other.upload_id, None)
    assert list(elsewhere.rglob("*")) == []  # nothing was written through the link
