"""An S3-compatible bucket (AWS S3, MinIO, any endpoint) under a prefix, read with the minio client.

The change signal is the object's ETag and size, so unchanged objects are known without downloading them; a document
is downloaded (streamed to a temporary file, never whole into memory) only when it is parsed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from docingest.core.sources.local import matches
from docingest.core.sources.names import is_hidden, local_name
from docingest.datamodel import SourceDocument
from docingest.exceptions import ConfigurationError, SourceError
from docingest.options import SourceOptions

if TYPE_CHECKING:
    import urllib3
    from minio import Minio

RETRY_BACKOFF_S = 0.5  # 0, 1, 2, 4 … s between attempts (urllib3 waits nothing before the first retry)
RETRY_STATUSES = (429, 500, 502, 503, 504)
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without leading/trailing slashes)."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigurationError(f"invalid S3 URI {uri!r}: expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def retrying_http(attempts: int, timeout_s: float, cert_check: bool = True) -> urllib3.PoolManager:
    """The urllib3 pool the minio client sends through. GET, HEAD, PUT and DELETE (never POST, such as completing
    a multipart upload) are retried by urllib3 on connection errors, timeouts and 429/5xx answers: ``attempts`` in
    all, with exponential backoff (a server's Retry-After is not followed: it has no upper bound). An S3 error
    answer (the object is gone, access denied) is final. CA certificates as minio's own default."""
    import os

    import certifi
    import urllib3

    retry = urllib3.Retry(total=attempts - 1, connect=attempts - 1, read=attempts - 1, status=attempts - 1,
                          other=attempts - 1, backoff_factor=RETRY_BACKOFF_S, status_forcelist=RETRY_STATUSES,
                          raise_on_status=False, respect_retry_after_header=False)  # idempotent methods only
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), maxsize=10, retries=retry,
                               cert_reqs="CERT_REQUIRED" if cert_check else "CERT_NONE",
                               ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where())


def make_client(endpoint: str | None, access_key: str | None, secret_key: str | None, region: str | None = None,
                secure: bool | None = None) -> tuple[Minio, str]:
    """A minio client for an endpoint URL (``http://host:port``, ``https://...`` or a bare host; AWS S3 when
    empty), and the endpoint's host:port for messages. Requests are retried by the client's HTTP pool
    (``DOCINGEST_S3_ATTEMPTS``, ``DOCINGEST_S3_TIMEOUT_S``)."""
    from minio import Minio

    from docingest.settings import get_settings

    settings = get_settings()
    endpoint = endpoint or "s3.amazonaws.com"
    if "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
        secure = scheme == "https" if secure is None else secure
    endpoint = endpoint.rstrip("/")
    client = Minio(endpoint, access_key=access_key, secret_key=secret_key, region=region,
                   secure=True if secure is None else secure,
                   http_client=retrying_http(settings.s3.attempts, settings.s3.timeout_s))
    return client, endpoint


def check_bucket(client: Minio, bucket: str, endpoint: str) -> None:
    """Fail early, with one line, on wrong credentials, a missing bucket or an unreachable endpoint."""
    from minio.error import S3Error

    try:
        exists = client.bucket_exists(bucket)
    except S3Error as exc:
        if exc.code in _AUTH_CODES:
            raise ConfigurationError(f"S3 {endpoint}: access denied for bucket {bucket!r} ({exc.code}): "
                                     "check the credentials") from None
        raise ConfigurationError(f"S3 {endpoint}: {exc.code}: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types
        raise ConfigurationError(f"S3 endpoint {endpoint} unreachable: {type(exc).__name__}") from None
    if not exists:
        raise ConfigurationError(f"S3 bucket not found: {bucket!r} on {endpoint}")


class S3Source:
    """Objects of one bucket under one prefix; the scope is ``s3://bucket/prefix``."""

    def __init__(self, uri: str, options: SourceOptions | None = None, *, endpoint: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str | None = None,
                 secure: bool | None = None) -> None:
        self.options = options or SourceOptions()
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._connect = (endpoint, access_key, secret_key, region, secure)
        self.client, self.endpoint = make_client(*self._connect)
        check_bucket(self.client, self.bucket, self.endpoint)

    def __getstate__(self) -> dict:  # picklable for Dask workers: the client is rebuilt there, not pickled
        return {k: v for k, v in self.__dict__.items() if k != "client"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.client = make_client(*self._connect)[0]

    def iter_documents(self) -> Iterator[SourceDocument]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            objects = sorted(self.client.list_objects(self.bucket, prefix=prefix, recursive=True),
                             key=lambda o: o.object_name)
        except Exception as exc:  # noqa: BLE001
            raise SourceError(f"cannot list {self.uri}: {exc}") from exc
        for obj in objects:
            if obj.is_dir:
                continue
            rel = obj.object_name[len(prefix):]
            if not rel or is_hidden(rel):
                continue
            if not matches(rel, self.options.include) or matches(rel, self.options.exclude):
                continue
            etag = (obj.etag or "").strip('"')
            yield SourceDocument(source_uri=self.uri, path=rel, uri=f"s3://{self.bucket}/{obj.object_name}",
                                 size=obj.size or 0, content_hash=f"s3-etag:{etag}:{obj.size}")

    @contextmanager
    def local_path(self, doc: SourceDocument) -> Iterator[Path]:
        key = doc.uri.removeprefix(f"s3://{self.bucket}/")
        with tempfile.TemporaryDirectory(prefix="docingest-s3-") as tmp:
            target = Path(tmp) / local_name(key)  # any legal key, read under a safe name
            self._download(key, target, doc.uri)
            yield target

    def _download(self, key: str, target: Path, uri: str) -> None:
        """Stream one object to disk. Transient network errors are retried by the client (see ``make_client``); what
        is left after its attempts, or a transfer broken mid-body (which no HTTP retry can resume), fails this
        document only, and the next run fetches it again. An S3 error answer (gone, access denied) is not retried."""
        from minio.error import S3Error
        from urllib3.exceptions import MaxRetryError

        try:
            if any(part in (".", "..") for part in key.split("/")):
                self._download_dotted(key, target)
            else:
                self.client.fget_object(self.bucket, key, str(target))  # streamed to disk in parts
        except S3Error as exc:
            raise SourceError(f"cannot download {uri}: {exc.code}: {exc.message}") from exc
        except SourceError:
            raise
        except MaxRetryError as exc:
            from docingest.settings import get_settings

            raise SourceError(f"cannot download {uri} after {get_settings().s3.attempts} attempts: {type(exc.reason).__name__}: "
                              f"{exc.reason}") from exc
        except Exception as exc:  # noqa: BLE001 - urllib3/socket errors left after the client's own retries
            raise SourceError(f"cannot download {uri}: {type(exc).__name__}: {exc}") from exc

    def _download_dotted(self, key: str, target: Path) -> None:
        """A key with ``.`` or ``..`` segments, which S3 allows and the minio client refuses to address, is read with
        botocore, which sends it unnormalised; it is streamed to ``target`` like any other object."""
        import botocore.session
        from botocore.config import Config
        from botocore.exceptions import ClientError

        from docingest.settings import get_settings

        settings = get_settings()
        endpoint, access_key, secret_key, region, secure = self._connect
        if endpoint and "://" not in endpoint:
            endpoint = f"{'http' if secure is False else 'https'}://{endpoint}"
        config = Config(s3={"addressing_style": "path"}, connect_timeout=settings.s3.timeout_s,
                        read_timeout=settings.s3.timeout_s,
                        retries={"mode": "standard", "total_max_attempts": settings.s3.attempts})
        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=endpoint or None, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name=region or "us-east-1", config=config)
        try:
            body = client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:  # an answer from the store (gone, denied): not retried
            error = exc.response.get("Error", {})
            raise SourceError(f"cannot download s3://{self.bucket}/{key}: {error.get('Code', 'Error')}: "
                              f"{error.get('Message', '')}") from exc
        with body, open(target, "wb") as fh:
            for block in body.iter_chunks(1 << 20):
                fh.write(block)
