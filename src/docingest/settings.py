"""Process-wide settings, read from the environment (prefix ``DOCINGEST_``) and an optional ``.env`` file.

Per-run choices (source, collection, PDF mode...) are flow parameters; where services live (Qdrant, the model)
and secrets belong here or in a block, so a deployment only needs ``source`` and ``collection``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class DocingestSettings(BaseSettings):
    """Settings for docingest. Every field can be set with ``DOCINGEST_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path(".docingest"),
        description="Working folder for embedded state (the embedded Qdrant store, uploads). Relative to the current directory.",
    )
    qdrant_url: str | None = Field(
        default=None,
        description="Qdrant server URL, e.g. http://localhost:6333. When set, the embedded store is not used.",
    )
    qdrant_path: Path | None = Field(
        default=None,
        description="Folder of the embedded store (Qdrant Edge in the process). Defaults to <home>/qdrant when no URL "
        "is set.",
    )
    qdrant_engine: Literal["edge", "qdrant-client"] = Field(
        default="edge",
        description="Engine of the embedded store: 'edge' (Qdrant Edge), or 'qdrant-client' (qdrant-client's local "
        "mode, an in-memory stand-in for a server: for tests and comparisons only).",
    )
    index_from_points: int = Field(
        default=20_000, ge=0,
        description="Embedded store: build a collection's HNSW index at the end of a run once this many of its "
        "points are not indexed yet; 0 never builds one (exact search only).",
    )
    index_threads: int = Field(default=0, ge=0, description="Embedded store: threads that build an index (0: auto).")
    store_min_free_mb: int = Field(
        default=64, ge=0, description="Embedded store: refuse writes while its disk has less free space than this."
    )
    qdrant_api_key: SecretStr | None = Field(default=None, description="API key for a Qdrant server.")
    qdrant_timeout: float = Field(default=30.0, description="Qdrant request timeout in seconds.")
    embed_model: str = Field(
        default=DEFAULT_MODEL,
        description="sentence-transformers model name or local path. The default is bundled and loads offline.",
    )
    embed_device: str | None = Field(
        default=None, description="Torch device for embedding (cpu, cuda, mps). Default: CUDA when present, else CPU."
    )

    s3_endpoint: str | None = Field(
        default=None, description="S3-compatible endpoint, e.g. http://localhost:9000 (MinIO). Default: AWS S3."
    )
    s3_region: str | None = Field(default=None, description="S3 region.")
    s3_access_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DOCINGEST_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
        description="S3 access key (or AWS_ACCESS_KEY_ID).",
    )
    s3_secret_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DOCINGEST_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
        description="S3 secret key (or AWS_SECRET_ACCESS_KEY).",
    )
    s3_attempts: int = Field(
        default=5, ge=1, le=20,
        description="Attempts per S3 request (connection errors, timeouts, 429 and 5xx answers), with exponential "
                    "backoff; the S3 clients' own retry configuration (urllib3 for minio, botocore's standard mode).",
    )
    s3_timeout_s: float = Field(
        default=60.0, gt=0, description="S3 connect and read timeout in seconds (a stalled transfer fails after it).",
    )
    git_token: SecretStr | None = Field(default=None, description="Token for git over HTTPS (GitLab/GitHub).")
    follow_symlinks: bool = Field(
        default=False, description="Local folders: also read files that symbolic links lead to outside the source "
        "root (the CLI's --follow-symlinks default). Off: such links are skipped and reported.")
    record_unchanged_runs: bool = Field(
        default=False, description="CLI on Prefect's temporary API (no PREFECT_API_URL): start a flow run even for a "
        "re-sync of a local folder that has nothing to write. Off: such a re-sync is answered from the plan, without "
        "booting the temporary server. With a Prefect server every run is a flow run.")
    task_runner: Literal["threads", "dask"] = Field(
        default="threads",
        description="Where parse-and-chunk tasks run: threads of the flow process, or a Dask cluster (prefect-dask).",
    )
    dask_address: str | None = Field(
        default=None,
        description="Scheduler of an existing Dask cluster (tcp://host:8786); without it, task_runner=dask starts a "
        "local cluster of dask_workers processes.",
    )
    dask_workers: int = Field(default=2, ge=1, description="Worker processes of the local Dask cluster.")
    pushgateway_url: str | None = Field(
        default=None,
        description="Prometheus Pushgateway (e.g. http://pushgateway:9091) that each run pushes its metrics to "
        "every 15 s and at its end. Default: metrics are not pushed.",
    )
    result_storage: str | None = Field(
        default=None,
        description="Saved block for the parse cache shared by workers (docingest-s3-result-storage/NAME or any "
        "Prefect WritableFileSystem block slug). Default: Prefect's local result storage.",
    )
    lock_lease_s: float = Field(
        default=60.0,
        ge=60,  # Prefect's minimum lease
        description=(
            "Lease of the per-collection-and-scope run lock (a Prefect global concurrency limit). A live run renews "
            "it; a crashed run's lock is freed at most this long (plus Prefect's 15 s repossessor loop) later."
        ),
    )
    lock_timeout_s: float | None = Field(
        default=None, description="Give up waiting for another run on the same collection and scope after this long."
    )
    crash_retries: int = Field(
        default=2, ge=0,
        description="A deployment run that crashed (its heartbeats stopped: worker, process or machine gone) is "
        "scheduled again by the automation deployments/setup_pools.py creates; past this many such retries the "
        "flow ends it as Failed instead of starting it again.",
    )

    # -- the upload service (docingest serve) --------------------------------------------------------------------------
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 key that signs the upload service's bearer tokens (the user is `sub`)."
    )
    jwt_jwks_url: str | None = Field(
        default=None, description="JWKS URL of an identity provider (RS256/ES256 tokens, keys cached); used instead "
        "of, or beside, jwt_secret."
    )
    jwt_audience: str | None = Field(default=None, description="Required `aud` claim of bearer tokens, if set.")
    jwt_issuer: str | None = Field(default=None, description="Required `iss` claim of bearer tokens, if set.")
    jwt_collections_claim: str = Field(
        default="collections", min_length=1, description="Claim listing the collections a token may write (and "
        "read): names or glob patterns (`team-a-*`, `*`). A token without it may write nowhere."
    )
    jwt_read_claim: str = Field(
        default="read", min_length=1, description="Claim listing collections a token may only read (search), in the "
        "same shape."
    )
    upload_bucket: str | None = Field(
        default=None, description="Keep uploads in this S3/MinIO bucket (`bucket` or `s3://bucket/prefix`, with the "
        "DOCINGEST_S3_* settings) instead of upload_dir. Parts become S3 multipart-upload parts (S3 needs parts of "
        "at least 5 MiB but the last)."
    )
    upload_deployment: str | None = Field(
        default=None, description="Run each upload's ingestion as a run of this Prefect deployment "
        "(`ingest-documents/local`), the priority choosing the work queue; without it the service runs the flow "
        "itself in one background worker."
    )
    upload_dir: Path | None = Field(
        default=None, description="Folder for uploads in progress, the per-collection upload sources and jobs. "
        "Default <home>/uploads."
    )
    upload_part_size: int = Field(default=8 * 1024 * 1024, ge=1024, description="Bytes per upload part.")
    upload_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1, description="Largest accepted upload.")
    upload_allowed_types: list[str] | None = Field(
        default=None, description="Accepted file extensions (JSON list). Default: every format docingest ingests "
        "except macro-enabled and legacy binary Office files and RTF, which uploads never accept (core/formats.py)."
    )
    upload_expiry_s: float = Field(
        default=24 * 3600, gt=0, description="Unfinished uploads are removed after this (with their parts); finished "
        "uploads' metadata too (their documents stay)."
    )
    upload_quota_bytes: int | None = Field(
        default=None, ge=1, description="Bytes one user's unfinished uploads may hold (declared sizes). Default 5 x "
        "upload_max_bytes."
    )
    upload_job_concurrency: int = Field(
        default=2, ge=1, description="Embedded job mode: flow runs at once (each one collection's waiting uploads); "
        "a slow document in one collection does not hold uploads to another."
    )
    upload_parse_timeout_s: float | None = Field(
        default=None, gt=0, description="Parse time limit per uploaded document (default: the ingest default, "
        "120 s); a document that passes it fails alone."
    )
    upload_max_unfinished: int = Field(default=100, ge=1, description="Unfinished uploads one user may hold.")
    service_malloc_arenas: int = Field(
        default=2, ge=0, description="glibc malloc arenas of `docingest serve` (0: glibc's default, eight per core). "
        "Fewer arenas keep less freed memory in a long-running service; MALLOC_ARENA_MAX, where set, wins."
    )
    rate_limit_requests_per_min: int = Field(default=600, ge=1, description="Requests per user and minute.")
    rate_limit_uploads_per_min: int = Field(default=60, ge=1, description="New uploads per user and minute.")

    def resolved_qdrant_path(self) -> Path:
        return self.qdrant_path if self.qdrant_path is not None else self.home / "qdrant"


@lru_cache(maxsize=1)
def get_settings() -> DocingestSettings:
    """The settings of this process (cached; call ``get_settings.cache_clear()`` after changing the environment)."""
    return DocingestSettings()
