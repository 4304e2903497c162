"""Shared result storage: Prefect task results (the parse-and-chunk cache) in an S3-compatible bucket.

Workers on different machines that point at the same block share one cache: a document parsed by one worker is not
parsed again by another (the cache key is content + settings + code, never a machine path).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import anyio.to_thread
from prefect.filesystems import WritableFileSystem
from pydantic import Field

from docingest.blocks.qdrant import DOCS
from docingest.blocks.sources import S3_LOGO, S3Credentials

if TYPE_CHECKING:
    from minio import Minio


class S3ResultStorage(WritableFileSystem):
    """Prefect result storage in a bucket of an S3-compatible store (MinIO, AWS S3), composed from S3Credentials.

    Example:
        Save it once, then point docingest at it (``DOCINGEST_RESULT_STORAGE`` or the flow's ``result_storage``):
        ```python
        from docingest.blocks import S3Credentials
        from docingest.blocks import S3ResultStorage

        S3ResultStorage(bucket="prefect-results", credentials=S3Credentials(endpoint="http://minio:9000",
                        access_key="...", secret_key="...")).save("parse-cache")
        # DOCINGEST_RESULT_STORAGE=docingest-s3-result-storage/parse-cache
        storage = S3ResultStorage.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Docingest S3 Result Storage"
    _block_type_slug = "docingest-s3-result-storage"
    _logo_url = S3_LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]

    credentials: S3Credentials = Field(default_factory=S3Credentials, description="How to reach the store.")
    bucket: str = Field(description="Bucket that holds the results (must exist).")
    basepath: str = Field(default="docingest-results", description="Key prefix under which results are written.")

    def _client(self) -> Minio:
        from docingest.core.sources.s3 import make_client

        return make_client(**self.credentials.connect_args())[0]

    def _key(self, path: str) -> str:
        return f"{self.basepath.strip('/')}/{path.lstrip('/')}" if self.basepath.strip("/") else path.lstrip("/")

    def check(self) -> None:
        """Raise ConfigurationError (one line) when the bucket is missing, the keys are wrong or the store is down."""
        from docingest.core.sources.s3 import check_bucket

        check_bucket(self._client(), self.bucket, self.credentials.endpoint or "s3.amazonaws.com")

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:  # type: ignore[override]
        """The stored bytes at ``path`` (raises when there are none: Prefect reads that as a cache miss)."""
        response = self._client().get_object(self.bucket, self._key(path))
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:  # type: ignore[override]
        """Store ``content`` at ``path``; returns the object key."""
        key = self._key(path)
        self._client().put_object(self.bucket, key, io.BytesIO(content), len(content))
        return key

    async def aread_path(self, path: str) -> bytes:
        return await anyio.to_thread.run_sync(self.read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return await anyio.to_thread.run_sync(self.write_path, path, content)
