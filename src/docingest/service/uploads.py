"""Resumable multipart uploads: parts with MD5 checks, assembly, type sniffing, expiry, on a local folder or an
S3/MinIO bucket (where parts are the parts of an S3 multipart upload).

Layout under the upload root (a folder, or ``s3://bucket/prefix``)::

    incoming/<user-key>/<upload-id>/meta.json, part-00001, ...   (while uploading; S3 keeps the parts itself)
    sources/<collection>/<upload-id>/<safe filename>            (complete: the collection's upload source)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, overload

from pydantic import BaseModel, Field

from docingest.core.sources.local import within
from docingest.service.sniff import sniff_file

if TYPE_CHECKING:
    from docingest.settings import DocingestSettings

PRIORITIES = ("critical", "high", "normal", "low")

class UploadError(Exception):
    """An upload request that cannot be served: ``status`` is the HTTP status, ``message`` safe to show."""

    def __init__(self, status: int, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.final = final  # the upload cannot be completed any more: its parts are gone or refused


class UploadMeta(BaseModel):
    upload_id: str
    user: str
    filename: str = Field(description="Sanitized file name.")
    size: int
    content_type: str = ""
    collection: str
    priority: str = "normal"
    part_size: int
    parts: int
    created_at: float
    etags: dict[int, str] = Field(default_factory=dict, description="Received parts: number -> MD5 hex.")
    completed: bool = False
    job_id: str | None = None
    s3_upload_id: str | None = Field(default=None, description="The S3 multipart upload (S3 store only).")
    sha256: str | None = None


MAX_NAME_BYTES = 200  # file systems allow 255 bytes per name; the rest is room for temporary suffixes


def sanitize_filename(name: str) -> str:
    """A safe single path component: no folders, no traversal, no control or odd characters, at most
    ``MAX_NAME_BYTES`` bytes of UTF-8."""
    name = unicodedata.normalize("NFKC", name or "").replace("\\", "/").split("/")[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = re.sub(r"[^\w.\- ()+,@]", "_", name).strip(" .")
    name = re.sub(r"\.{2,}", ".", name)
    if not name:
        name = "upload"
    stem, dot, ext = name.rpartition(".")
    if dot and len(ext.encode()) <= 16:  # keep the extension; cut the stem
        return _cut(stem, MAX_NAME_BYTES - len(ext.encode()) - 1).rstrip(" .") + "." + ext
    return _cut(name, MAX_NAME_BYTES)


def _cut(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character (file systems count bytes: 255)."""
    return text.encode()[:max_bytes].decode("utf-8", errors="ignore")


def user_key(user: str) -> str:
    return hashlib.sha256(user.encode()).hexdigest()[:24]


class LocalBackend:
    """Parts as files next to the upload's meta.json; completion concatenates them into the source folder."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @overload
    def folder(self, meta_or_user: UploadMeta) -> Path: ...
    @overload
    def folder(self, meta_or_user: str, upload_id: str) -> Path: ...
    def folder(self, meta_or_user: Any, upload_id: str | None = None) -> Path:  # an UploadMeta, or a user and an id
        user, upload_id = (meta_or_user.user, meta_or_user.upload_id) if upload_id is None else (meta_or_user,
                                                                                                   upload_id)
        return self.root / "incoming" / user_key(user) / upload_id

    def source_uri(self, collection: str) -> str:
        return str(self.root / "sources" / collection)

    def healthy(self) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        return os.access(self.root, os.W_OK)

    def load(self, user: str, upload_id: str) -> UploadMeta | None:
        path = self.folder(user, upload_id) / "meta.json"
        return UploadMeta.model_validate_json(path.read_text()) if path.is_file() else None

    def save(self, meta: UploadMeta) -> None:
        folder = self.folder(meta)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"meta.json.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.write_text(meta.model_dump_json())
            tmp.replace(folder / "meta.json")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def all_meta(self, user: str | None = None) -> Iterator[UploadMeta]:
        """Every upload's metadata, or one user's."""
        pattern = f"{user_key(user)}/*/meta.json" if user is not None else "*/*/meta.json"
        for path in (self.root / "incoming").glob(pattern):
            try:
                yield UploadMeta.model_validate_json(path.read_text())
            except (OSError, ValueError):
                continue

    def begin(self, meta: UploadMeta) -> None:
        self.save(meta)

    def put_part(self, meta: UploadMeta, number: int, data: bytes, md5_b64: str) -> None:
        folder = self.folder(meta)
        # The store holds this upload's lock: parts, completion and abort of one upload never interleave.
        current = self.load(meta.user, meta.upload_id)
        if current is None or current.completed:  # aborted or completed meanwhile: nothing is written
            raise UploadError(404 if current is None else 409,
                              "upload not found" if current is None else "upload already completed")
        tmp = folder / f"part-{number:05d}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.write_bytes(data)
            tmp.replace(folder / f"part-{number:05d}")
        except BaseException:  # e.g. the disk is full: no half-written part stays
            tmp.unlink(missing_ok=True)
            raise
        current.etags[number] = hashlib.md5(data).hexdigest()  # noqa: S324
        self.save(current)

    def received(self, meta: UploadMeta) -> dict[int, str]:
        return dict(meta.etags)

    def assemble(self, meta: UploadMeta, key: str) -> tuple[int, str, str | None]:
        """Concatenate the parts into ``sources/<key>``; returns (size, sha256 hex, why its content is refused or
        None). Any failure leaves the parts as they were and no assembled copy behind."""
        folder = self.folder(meta)
        assembled = folder / f"assembled.tmp-{uuid.uuid4().hex[:8]}"
        digest = hashlib.sha256()
        target = self.root / "sources" / key
        try:
            with open(assembled, "wb") as out:
                for n in range(1, meta.parts + 1):
                    with open(folder / f"part-{n:05d}", "rb") as part:
                        while chunk := part.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
            sources = os.path.realpath(self.root / "sources")
            if not within(os.path.realpath(target.parent), sources):  # a link planted in the store leads elsewhere
                raise UploadError(500, "the upload store's folder for this collection leads outside the store",
                                  final=True)
            refused = sniff_file(assembled, meta.filename.rpartition(".")[2].lower())
            target.parent.mkdir(parents=True, exist_ok=True)
            assembled.replace(target)  # rename: a link at the target is replaced, never followed
        except BaseException:
            assembled.unlink(missing_ok=True)
            raise
        for piece in folder.glob("part-*"):
            piece.unlink()
        return target.stat().st_size, digest.hexdigest(), refused

    def remove_document(self, key: str) -> None:
        target = self.root / "sources" / key
        target.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            target.parent.rmdir()

    def discard(self, meta: UploadMeta) -> None:
        shutil.rmtree(self.folder(meta), ignore_errors=True)
        with contextlib.suppress(OSError):  # the user's folder, once empty
            self.folder(meta).parent.rmdir()


class S3Backend:
    """Parts are the parts of an S3 multipart upload on the final key (S3 checks each Content-MD5 too); S3 itself
    says which parts it holds, so several service replicas can take parts of the same upload."""

    kind = "s3"
    REFUSALS = ("EntityTooSmall", "InvalidPart", "InvalidPartOrder", "NoSuchUpload")

    def __init__(self, uri: str, endpoint: str | None, access_key: str | None, secret_key: str | None,
                 region: str | None) -> None:
        from docingest.core.sources.s3 import check_bucket, make_client, parse_s3_uri

        self.bucket, self.prefix = parse_s3_uri(uri if uri.startswith("s3://") else f"s3://{uri}")
        self.client, self.endpoint = make_client(endpoint, access_key, secret_key, region)
        check_bucket(self.client, self.bucket, self.endpoint)

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _meta_key(self, user: str, upload_id: str) -> str:
        return self._key("incoming", user_key(user), upload_id, "meta.json")

    def _final_key(self, meta: UploadMeta) -> str:
        return self._key("sources", meta.collection, meta.upload_id, meta.filename)

    def source_uri(self, collection: str) -> str:
        return f"s3://{self.bucket}/{self._key('sources', collection)}"

    def healthy(self) -> bool:
        return self.client.bucket_exists(self.bucket)

    def load(self, user: str, upload_id: str) -> UploadMeta | None:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, self._meta_key(user, upload_id))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise
        try:
            return UploadMeta.model_validate_json(response.read())
        finally:
            response.close()
            response.release_conn()

    def save(self, meta: UploadMeta) -> None:
        data = meta.model_dump_json().encode()
        self.client.put_object(self.bucket, self._meta_key(meta.user, meta.upload_id), io.BytesIO(data), len(data),
                               content_type="application/json")

    def all_meta(self, user: str | None = None) -> Iterator[UploadMeta]:
        """Every upload's metadata, or one user's."""
        prefix = self._key("incoming", user_key(user)) if user is not None else self._key("incoming")
        for obj in self.client.list_objects(self.bucket, prefix=prefix + "/", recursive=True):
            if obj.object_name.endswith("/meta.json"):
                try:
                    response = self.client.get_object(self.bucket, obj.object_name)
                    try:
                        yield UploadMeta.model_validate_json(response.read())
                    finally:
                        response.close()
                        response.release_conn()
                except Exception:  # noqa: BLE001, S112 - a vanished or broken meta object is skipped
                    continue

    def begin(self, meta: UploadMeta) -> None:
        meta.s3_upload_id = self.client._create_multipart_upload(self.bucket, self._final_key(meta), {
            "Content-Type": meta.content_type or "application/octet-stream"})
        try:
            self.save(meta)
        except BaseException:  # without its metadata nothing would ever find (and expire) the multipart upload
            with contextlib.suppress(Exception):
                self.client._abort_multipart_upload(self.bucket, self._final_key(meta), meta.s3_upload_id)
            raise

    def put_part(self, meta: UploadMeta, number: int, data: bytes, md5_b64: str) -> None:
        self.client._upload_part(self.bucket, self._final_key(meta), data, {"Content-MD5": md5_b64},
                                 meta.s3_upload_id, number)  # type: ignore[arg-type]  # set since create()

    def received(self, meta: UploadMeta) -> dict[int, str]:
        parts, marker = {}, None
        while True:
            result = self.client._list_parts(self.bucket, self._final_key(meta), meta.s3_upload_id,  # type: ignore[arg-type]
                                             part_number_marker=marker)
            for part in result.parts:
                parts[part.part_number] = part.etag.strip('"')
            if not result.is_truncated:
                return parts
            marker = str(result.next_part_number_marker)

    def assemble(self, meta: UploadMeta, key: str) -> tuple[int, str, str | None]:
        """Complete the multipart upload; returns (size, sha256 hex, why its content is refused or None), read back
        through a temporary file that is always removed."""
        from minio.datatypes import Part
        from minio.error import S3Error

        final = self._final_key(meta)
        parts = [Part(n, etag) for n, etag in sorted(self.received(meta).items())]
        try:
            self.client._complete_multipart_upload(self.bucket, final, meta.s3_upload_id, parts)  # type: ignore[arg-type]
        except S3Error as exc:
            if exc.code in self.REFUSALS:  # e.g. EntityTooSmall: parts under the store's minimum part size
                raise UploadError(400, f"the store refused to assemble the parts: {exc.code}", final=True) from None
            raise UploadError(503, "the store failed to assemble the parts; retry completing the upload") from None
        except Exception:  # noqa: BLE001 - the store is unreachable: the parts are still there
            raise UploadError(503, "the store failed to assemble the parts; retry completing the upload") from None
        extension = meta.filename.rpartition(".")[2].lower()
        try:
            digest = hashlib.sha256()
            with tempfile.TemporaryDirectory(prefix="docingest-check-") as folder:
                local = Path(folder) / f"upload.{extension}"
                response = self.client.get_object(self.bucket, final)
                try:
                    with open(local, "wb") as out:
                        for chunk in response.stream(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                finally:
                    response.close()
                    response.release_conn()
                size, refused = local.stat().st_size, sniff_file(local, extension)
        except Exception:  # noqa: BLE001 - assembled but not checked: it must not stay; the parts are consumed
            raise UploadError(503, "the store failed while checking the assembled upload; upload the file again",
                              final=True) from None
        return size, digest.hexdigest(), refused

    def remove_document(self, key: str) -> None:
        self.client.remove_object(self.bucket, self._key("sources", key))

    def discard(self, meta: UploadMeta) -> None:
        if meta.s3_upload_id and not meta.completed:
            with contextlib.suppress(Exception):
                self.client._abort_multipart_upload(self.bucket, self._final_key(meta), meta.s3_upload_id)
        self.client.remove_object(self.bucket, self._meta_key(meta.user, meta.upload_id))


class UploadStore:
    """Uploads of every user in one store; a user only ever sees their own (others' ids are 'not found')."""

    def __init__(self, root: Path | None, part_size: int, max_bytes: int, allowed: set[str], expiry_s: float,
                 backend: LocalBackend | S3Backend | None = None, quota_bytes: int | None = None,
                 max_unfinished: int = 100) -> None:
        if backend is None and root is None:
            raise ValueError("an upload store needs a folder or a backend")
        self.backend = backend or LocalBackend(Path(cast(Path, root)))
        self.part_size, self.max_bytes = part_size, max_bytes
        self.allowed, self.expiry_s = allowed, expiry_s
        self.quota_bytes, self.max_unfinished = quota_bytes or 5 * max_bytes, max_unfinished
        self._locks = [threading.RLock() for _ in range(64)]
        self._user_locks = [threading.Lock() for _ in range(16)]

    def lock(self, upload_id: str) -> threading.RLock:
        """The lock of one upload in this process (striped): a part, the completion and an abort of the same upload
        never interleave (two completions would assemble twice; a part could land after an abort)."""
        return self._locks[int(hashlib.md5(upload_id.encode()).hexdigest()[:8], 16) % len(self._locks)]  # noqa: S324

    def source_uri(self, collection: str) -> str:
        """The collection's upload source, as ``docingest ingest`` takes it."""
        return self.backend.source_uri(collection)

    def save(self, meta: UploadMeta) -> None:
        """Store an upload's metadata (its job id, for one)."""
        self.backend.save(meta)

    def get(self, user: str, upload_id: str) -> UploadMeta:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            raise UploadError(404, "upload not found")
        meta = self.backend.load(user, upload_id)
        if meta is None or meta.user != user:
            raise UploadError(404, "upload not found")
        return meta

    def create(self, user: str, filename: str, size: int, content_type: str, collection: str,
               priority: str) -> UploadMeta:
        safe = sanitize_filename(filename)
        ext = safe.rpartition(".")[2].lower() if "." in safe else ""
        if ext not in self.allowed:
            raise UploadError(415, f"file type .{ext or '?'} is not accepted")
        if size <= 0 or size > self.max_bytes:
            raise UploadError(413, f"size must be between 1 and {self.max_bytes} bytes")
        if priority not in PRIORITIES:
            raise UploadError(422, f"priority must be one of {', '.join(PRIORITIES)}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", collection) or collection.endswith("__manifest"):
            raise UploadError(422, "invalid collection name")
        meta = UploadMeta(upload_id=uuid.uuid4().hex, user=user, filename=safe, size=size,
                          content_type=content_type[:200], collection=collection, priority=priority,
                          part_size=self.part_size, parts=max(1, -(-size // self.part_size)), created_at=time.time())
        lock = self._user_locks[int(user_key(user)[:8], 16) % len(self._user_locks)]
        with lock:  # two uploads created at once by one user cannot both slip under the quota
            self._check_quota(user, size)
            self.backend.begin(meta)
        return meta

    def _check_quota(self, user: str, size: int) -> None:
        """413 when the user's unfinished uploads would hold more than the quota (bytes declared, whether received
        yet or not), or be too many."""
        unfinished = [m for m in self.backend.all_meta(user) if not m.completed and m.user == user]
        held = sum(m.size for m in unfinished)
        if held + size > self.quota_bytes:
            raise UploadError(413, f"quota: your unfinished uploads would hold {held + size} bytes, more than "
                                   f"{self.quota_bytes}; complete or abort some first")
        if len(unfinished) >= self.max_unfinished:
            raise UploadError(429, f"quota: {len(unfinished)} unfinished uploads; complete or abort some first")

    def put_part(self, user: str, upload_id: str, number: int, data: bytes, content_md5: str | None) -> str:
        with self.lock(upload_id):
            return self._put_part(user, upload_id, number, data, content_md5)

    def _put_part(self, user: str, upload_id: str, number: int, data: bytes, content_md5: str | None) -> str:
        meta = self.get(user, upload_id)
        if meta.completed:
            raise UploadError(409, "upload already completed")
        if not 1 <= number <= meta.parts:
            raise UploadError(400, f"part number must be between 1 and {meta.parts}")
        expected = meta.part_size if number < meta.parts else meta.size - meta.part_size * (meta.parts - 1)
        if len(data) != expected:
            raise UploadError(400, f"part {number} must be {expected} bytes, got {len(data)}")
        digest = hashlib.md5(data).digest()  # noqa: S324 - integrity check, as S3's Content-MD5
        if not content_md5:
            raise UploadError(400, "Content-MD5 header is required")
        try:
            given = base64.b64decode(content_md5, validate=True)
        except ValueError:
            raise UploadError(400, "Content-MD5 is not base64") from None
        if given != digest:
            raise UploadError(400, "Content-MD5 mismatch: part not stored")
        self.backend.put_part(meta, number, data, content_md5)
        return digest.hex()

    def received(self, meta: UploadMeta) -> list[int]:
        return sorted(self.backend.received(meta)) if not meta.completed else list(range(1, meta.parts + 1))

    def missing(self, meta: UploadMeta) -> list[int]:
        have = set(self.received(meta))
        return [n for n in range(1, meta.parts + 1) if n not in have]

    def complete(self, user: str, upload_id: str, sha256: str | None) -> tuple[UploadMeta, str]:
        """Assemble the parts into the collection's upload source; checks size, sha256 and the real type. Returns
        the meta and the document's path in the collection's upload source (``<upload id>/<name>``)."""
        with self.lock(upload_id):
            return self._complete(user, upload_id, sha256)

    @staticmethod
    def document(meta: UploadMeta) -> str:
        """The upload's document in its collection's upload source."""
        return f"{meta.upload_id}/{meta.filename}"

    def _complete(self, user: str, upload_id: str, sha256: str | None) -> tuple[UploadMeta, str]:
        meta = self.get(user, upload_id)
        if meta.completed:
            raise UploadError(409, "upload already completed")
        if missing := self.missing(meta):
            raise UploadError(409, f"parts missing: {missing[:20]}")
        document = self.document(meta)
        key = f"{meta.collection}/{document}"
        try:
            size, digest, refused = self.backend.assemble(meta, key)
        except UploadError as exc:
            if exc.final:  # refused, or the parts were consumed: nothing of the upload stays behind
                with contextlib.suppress(Exception):
                    self.backend.remove_document(key)
                with contextlib.suppress(Exception):
                    self.backend.discard(meta)  # aborts the multipart upload if S3 still holds it
            raise
        except OSError:  # the parts are still there: completing again may succeed
            raise UploadError(503, "the store failed while assembling the upload; retry completing it") from None
        reason = None
        if size != meta.size:
            reason = (400, "assembled size does not match the declared size")
        elif sha256 and digest != sha256.lower():
            reason = (400, "sha256 mismatch: the upload is discarded; upload the file again")
        elif refused:
            reason = (415, f"refused: {refused}")
        if reason:  # nothing refused stays in the upload source, and the upload is gone
            self.backend.remove_document(key)
            meta.completed = True
            self.backend.discard(meta)
            raise UploadError(*reason)
        meta.completed, meta.sha256 = True, digest
        self.backend.save(meta)
        return meta, document

    def abort(self, user: str, upload_id: str) -> None:
        with self.lock(upload_id):
            meta = self.get(user, upload_id)  # 404 for someone else's
            self.backend.discard(meta)

    def forget(self, user: str, upload_id: str) -> None:
        """Remove everything of an upload: its parts, its metadata and, if assembled, its document (an upload that
        failed inside one request, whose id nobody saw). Never raises."""
        with contextlib.suppress(Exception), self.lock(upload_id):
            meta = self.get(user, upload_id)
            if meta.completed:
                self.backend.remove_document(f"{meta.collection}/{self.document(meta)}")
            self.backend.discard(meta)

    def expire(self, now: float | None = None) -> int:
        """Remove uploads older than the expiry: unfinished ones with their parts; finished ones' metadata (their
        document stays: it is the collection's). A finished upload whose job was never accepted goes whole.
        Returns how many."""
        now = now or time.time()
        removed = 0
        for listed in list(self.backend.all_meta()):
            if now - listed.created_at > self.expiry_s:
                with self.lock(listed.upload_id):
                    meta = self.backend.load(listed.user, listed.upload_id)  # as it is now, not as listed
                    if meta is None:
                        continue
                    if meta.completed and meta.job_id is None:
                        with contextlib.suppress(Exception):
                            self.backend.remove_document(f"{meta.collection}/{self.document(meta)}")
                    self.backend.discard(meta)
                removed += 1
        return removed


def make_store(settings: DocingestSettings, allowed: set[str]) -> UploadStore:
    """The upload store the settings ask for: ``DOCINGEST_UPLOAD_BUCKET`` (S3/MinIO, with the DOCINGEST_S3_*
    settings), else the local folder ``DOCINGEST_UPLOAD_DIR`` (default ``<home>/uploads``)."""
    root = settings.upload.dir or settings.home / "uploads"
    backend = None
    if settings.upload.bucket:
        secret = lambda v: v.get_secret_value() if v else None  # noqa: E731
        if settings.upload.part_size < 5 * 1024 * 1024:
            import logging

            logging.getLogger("docingest.service").warning(
                "DOCINGEST_UPLOAD_PART_SIZE is %d bytes: S3 and MinIO refuse to assemble parts under 5 MiB (but the "
                "last), so multi-part uploads will be refused", settings.upload.part_size)
        backend = S3Backend(settings.upload.bucket, settings.s3.endpoint, secret(settings.s3.access_key),
                            secret(settings.s3.secret_key), settings.s3.region)
    return UploadStore(root, settings.upload.part_size, settings.upload.max_bytes, allowed, settings.upload.expiry_s,
                       backend=backend, quota_bytes=settings.upload.quota_bytes,
                       max_unfinished=settings.upload.max_unfinished)
