"""Resumable multipart uploads on a local folder: parts with MD5 checks, assembly, type sniffing, expiry.

Layout under the upload root::

    incoming/<user-key>/<upload-id>/meta.json, part-00001, ...   (while uploading)
    sources/<collection>/<upload-id>/<safe filename>            (complete: the collection's upload source)
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import threading
import time
import unicodedata
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

PRIORITIES = ("critical", "high", "normal", "low")

# Extensions docingest ingests, and what their bytes must look like.
ZIP_FORMATS = {"docx", "pptx", "xlsx", "odt", "ods", "odp"}
TEXT_FORMATS = {"md", "markdown", "txt", "html", "htm", "xhtml", "csv", "adoc", "asciidoc", "xml", "nxml", "tex",
                "vtt", "json"}
BINARY_SIGNATURES = {"pdf": (b"%PDF-",), "png": (b"\x89PNG\r\n\x1a\n",), "jpg": (b"\xff\xd8\xff",),
                     "jpeg": (b"\xff\xd8\xff",), "tif": (b"II*\x00", b"MM\x00*"), "tiff": (b"II*\x00", b"MM\x00*")}
EXECUTABLE_SIGNATURES = (b"MZ", b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xce", b"#!")


class UploadError(Exception):
    """An upload request that cannot be served: ``status`` is the HTTP status, ``message`` safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


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


def sanitize_filename(name: str) -> str:
    """A safe single path component: no folders, no traversal, no control or odd characters, bounded length."""
    name = unicodedata.normalize("NFKC", name or "").replace("\\", "/").split("/")[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = re.sub(r"[^\w.\- ()+,@]", "_", name).strip(" .")
    name = re.sub(r"\.{2,}", ".", name)
    if not name:
        name = "upload"
    stem, dot, ext = name.rpartition(".")
    if dot and len(name) > 200:
        name = stem[: 200 - len(ext) - 1] + "." + ext
    return name[:200]


def user_key(user: str) -> str:
    return hashlib.sha256(user.encode()).hexdigest()[:24]


def sniff(path: Path, extension: str) -> str | None:
    """Why the bytes do not match the extension (None when they do): magic bytes, not the name."""
    with open(path, "rb") as fh:
        head = fh.read(8192)
    if head.startswith(EXECUTABLE_SIGNATURES):
        return "the file is an executable or script, whatever its name"
    if extension in BINARY_SIGNATURES:
        return None if head.startswith(BINARY_SIGNATURES[extension]) else f"the content is not a .{extension} file"
    if extension in ZIP_FORMATS:
        return None if head.startswith(b"PK\x03\x04") else f"the content is not a .{extension} (zip) document"
    if extension in TEXT_FORMATS:
        if b"\x00" in head:
            return f"the content is binary, not .{extension} text"
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a character cut at the 8 KiB boundary
                return f"the content is not UTF-8 .{extension} text"
        return None
    return f"file type .{extension} is not accepted"


class UploadStore:
    """Uploads of every user in one folder; a user only ever sees their own (others' ids are 'not found')."""

    def __init__(self, root: Path, part_size: int, max_bytes: int, allowed: set[str], expiry_s: float) -> None:
        self.root, self.part_size, self.max_bytes = Path(root), part_size, max_bytes
        self.allowed, self.expiry_s = allowed, expiry_s
        self._lock = threading.Lock()

    def _dir(self, user: str, upload_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            raise UploadError(404, "upload not found")
        return self.root / "incoming" / user_key(user) / upload_id

    def source_dir(self, collection: str) -> Path:
        return self.root / "sources" / collection

    def _save(self, meta: UploadMeta) -> None:
        folder = self._dir(meta.user, meta.upload_id)
        tmp = folder / "meta.json.tmp"
        tmp.write_text(meta.model_dump_json())
        tmp.replace(folder / "meta.json")

    def get(self, user: str, upload_id: str) -> UploadMeta:
        path = self._dir(user, upload_id) / "meta.json"
        if not path.is_file():
            raise UploadError(404, "upload not found")
        meta = UploadMeta.model_validate_json(path.read_text())
        if meta.user != user:
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
        meta = UploadMeta(upload_id=uuid.uuid4().hex, user=user, filename=safe, size=size, content_type=content_type,
                          collection=collection, priority=priority, part_size=self.part_size,
                          parts=max(1, -(-size // self.part_size)), created_at=time.time())
        self._dir(user, meta.upload_id).mkdir(parents=True)
        self._save(meta)
        return meta

    def put_part(self, user: str, upload_id: str, number: int, data: bytes, content_md5: str | None) -> str:
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
        folder = self._dir(user, upload_id)
        tmp = folder / f"part-{number:05d}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(data)
        tmp.replace(folder / f"part-{number:05d}")
        with self._lock:
            meta = self.get(user, upload_id)
            meta.etags[number] = digest.hex()
            self._save(meta)
        return digest.hex()

    def missing(self, meta: UploadMeta) -> list[int]:
        return [n for n in range(1, meta.parts + 1) if n not in meta.etags]

    def complete(self, user: str, upload_id: str, sha256: str | None) -> tuple[UploadMeta, Path]:
        """Assemble the parts into the collection's upload source; checks size, sha256 and the real type."""
        meta = self.get(user, upload_id)
        if meta.completed:
            raise UploadError(409, "upload already completed")
        if missing := self.missing(meta):
            raise UploadError(409, f"parts missing: {missing[:20]}")
        folder = self._dir(user, upload_id)
        assembled = folder / "assembled"
        digest = hashlib.sha256()
        with open(assembled, "wb") as out:
            for n in range(1, meta.parts + 1):
                with open(folder / f"part-{n:05d}", "rb") as part:
                    while chunk := part.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        if assembled.stat().st_size != meta.size:
            raise UploadError(400, "assembled size does not match the declared size")
        if sha256 and digest.hexdigest() != sha256.lower():
            raise UploadError(400, "sha256 mismatch")
        ext = meta.filename.rpartition(".")[2].lower()
        if reason := sniff(assembled, ext):
            self.abort(user, upload_id)
            raise UploadError(415, f"refused: {reason}")
        target = self.source_dir(meta.collection) / upload_id / meta.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        assembled.replace(target)
        meta.completed = True
        self._save(meta)
        for part in folder.glob("part-*"):
            part.unlink()
        return meta, target

    def abort(self, user: str, upload_id: str) -> None:
        self.get(user, upload_id)  # 404 for someone else's
        shutil.rmtree(self._dir(user, upload_id), ignore_errors=True)

    def expire(self, now: float | None = None) -> int:
        """Remove incomplete uploads older than the expiry; returns how many."""
        now = now or time.time()
        removed = 0
        for meta_file in (self.root / "incoming").glob("*/*/meta.json"):
            try:
                meta = UploadMeta.model_validate_json(meta_file.read_text())
            except (OSError, ValueError):
                continue
            if not meta.completed and now - meta.created_at > self.expiry_s:
                shutil.rmtree(meta_file.parent, ignore_errors=True)
                removed += 1
        return removed


