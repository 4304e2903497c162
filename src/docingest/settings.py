"""Process-wide settings, read from the environment (prefix ``DOCINGEST_``) and an optional ``.env`` file.

Per-run choices (source, collection, PDF mode...) are flow parameters; where services live (Qdrant, the model)
and secrets belong here or in a block, so a deployment only needs ``source`` and ``collection``.

The settings come in sections, one per concern, the way Prefect's own settings do (``PREFECT_API_URL`` is
``settings.api.url``): ``DOCINGEST_QDRANT_URL`` is ``get_settings().qdrant.url``. Each section reads its own
variables (its prefix plus the field name); where a documented name does not follow that rule
(``DOCINGEST_INDEX_FROM_POINTS`` is ``qdrant.index_from_points``) the field names it as its alias, so every
variable in docs/configuration.md keeps working. ``env_names()`` lists them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class _Section(BaseSettings):
    """One section: reads ``<env_prefix><FIELD>`` (or the field's alias) from the environment and ``.env``."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_", env_file=".env", extra="ignore", populate_by_name=True)


class QdrantSettings(_Section):
    """Where Qdrant lives and how the embedded store behaves (``DOCINGEST_QDRANT_*``)."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_QDRANT_")

    url: str | None = Field(
        default=None,
        description="Qdrant server URL, e.g. http://localhost:6333. When set, the embedded store is not used.",
    )
    path: Path | None = Field(
        default=None,
        description="Folder of the embedded store (Qdrant Edge in the process). Defaults to <home>/qdrant when no URL "
        "is set.",
    )
    engine: Literal["edge", "qdrant-client"] = Field(
        default="edge",
        description="Engine of the embedded store: 'edge' (Qdrant Edge), or 'qdrant-client' (qdrant-client's local "
        "mode, an in-memory stand-in for a server: for tests and comparisons only).",
    )
    api_key: SecretStr | None = Field(default=None, description="API key for a Qdrant server.")
    timeout: float = Field(default=30.0, description="Qdrant request timeout in seconds.")
    index_from_points: int = Field(
        default=20_000, ge=0, validation_alias=AliasChoices("index_from_points", "DOCINGEST_INDEX_FROM_POINTS"),
        description="Embedded store: build a collection's HNSW index at the end of a run once this many of its "
        "points are not indexed yet; 0 never builds one (exact search only).",
    )
    index_threads: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("index_threads", "DOCINGEST_INDEX_THREADS"),
        description="Embedded store: threads that build an index (0: auto).",
    )
    min_free_mb: int = Field(
        default=64, ge=0, validation_alias=AliasChoices("min_free_mb", "DOCINGEST_STORE_MIN_FREE_MB"),
        description="Embedded store: refuse writes while its disk has less free space than this.",
    )


class EmbedSettings(_Section):
    """The embedding model (``DOCINGEST_EMBED_*``)."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_EMBED_")

    model: str = Field(
        default=DEFAULT_MODEL,
        description="sentence-transformers model name or local path. The default is bundled and loads offline.",
    )
    device: str | None = Field(
        default=None, description="Torch device for embedding (cpu, cuda, mps). Default: CUDA when present, else CPU."
    )


class S3Settings(_Section):
    """S3-compatible storage: bucket sources, the upload store, the parse cache (``DOCINGEST_S3_*``)."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_S3_")

    endpoint: str | None = Field(
        default=None, description="S3-compatible endpoint, e.g. http://localhost:9000 (MinIO). Default: AWS S3."
    )
    region: str | None = Field(default=None, description="S3 region.")
    access_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("access_key", "DOCINGEST_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
        description="S3 access key (or AWS_ACCESS_KEY_ID).",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("secret_key", "DOCINGEST_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
        description="S3 secret key (or AWS_SECRET_ACCESS_KEY).",
    )
    attempts: int = Field(
        default=5, ge=1, le=20,
        description="Attempts per S3 request (connection errors, timeouts, 429 and 5xx answers), with exponential "
                    "backoff; the S3 clients' own retry configuration (urllib3 for minio, botocore's standard mode).",
    )
    timeout_s: float = Field(
        default=60.0, gt=0, description="S3 connect and read timeout in seconds (a stalled transfer fails after it).",
    )


class GitSettings(_Section):
    """Git repository sources (``DOCINGEST_GIT_*``)."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_GIT_")

    token: SecretStr | None = Field(default=None, description="Token for git over HTTPS (GitLab/GitHub).")


class PrefectSettings(_Section):
    """How runs use Prefect: task runner, result storage, the run lock, crash retries (``DOCINGEST_*``)."""

    task_runner: Literal["threads", "dask"] = Field(
        default="threads",
        description="Where parse-and-chunk tasks run: threads of the flow process, or a Dask cluster (prefect-dask).",
    )
    result_storage: str | None = Field(
        default=None,
        description="Saved block for the parse cache shared by workers (docingest-s3-result-storage/NAME or any "
        "Prefect WritableFileSystem block slug). Default: Prefect's local result storage.",
    )
    record_unchanged_runs: bool = Field(
        default=False, description="CLI on Prefect's temporary API (no PREFECT_API_URL): start a flow run even for a "
        "re-sync of a local folder that has nothing to write. Off: such a re-sync is answered from the plan, without "
        "booting the temporary server. With a Prefect server every run is a flow run.")
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


class DaskSettings(_Section):
    """The Dask cluster of ``task_runner=dask`` (``DOCINGEST_DASK_*``)."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_DASK_")

    address: str | None = Field(
        default=None,
        description="Scheduler of an existing Dask cluster (tcp://host:8786); without it, task_runner=dask starts a "
        "local cluster of `workers` processes.",
    )
    workers: int = Field(default=2, ge=1, description="Worker processes of the local Dask cluster.")
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Give up connecting to the scheduler at `address` after this long (a refused "
        "connection fails at once); the run fails before it writes anything.")
    worker_wait_s: float = Field(
        default=60.0, gt=0, description="A run whose cluster has no worker (every worker left, or none joined) for "
        "this long fails; pools written before stay written, the next run does the rest.")


class ParseSettings(_Section):
    """The parse workers' processes (``DOCINGEST_PARSE_*``); per-run parse choices are options, not settings."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_PARSE_")

    start_method: Literal["forkserver", "spawn"] | None = Field(
        default=None, description="How parse workers start: a fork server that imported Docling once (the default "
        "where the platform has one), or `spawn`: each worker a fresh interpreter (slower; for debugging).",
    )


class JwtSettings(_Section):
    """Bearer tokens of the upload service (``DOCINGEST_JWT_*``)."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_JWT_")

    secret: SecretStr | None = Field(
        default=None, description="HS256 key that signs the upload service's bearer tokens (the user is `sub`)."
    )
    jwks_url: str | None = Field(
        default=None, description="JWKS URL of an identity provider (RS256/ES256 tokens, keys cached); used instead "
        "of, or beside, the secret."
    )
    audience: str | None = Field(default=None, description="Required `aud` claim of bearer tokens, if set.")
    issuer: str | None = Field(default=None, description="Required `iss` claim of bearer tokens, if set.")
    collections_claim: str = Field(
        default="collections", min_length=1, description="Claim listing the collections a token may write (and "
        "read): names or glob patterns (`team-a-*`, `*`). A token without it may write nowhere."
    )
    read_claim: str = Field(
        default="read", min_length=1, description="Claim listing collections a token may only read (search), in the "
        "same shape."
    )


class UploadSettings(_Section):
    """Uploads to the service: where they are kept, how big, how many, how their jobs run (``DOCINGEST_UPLOAD_*``)."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_UPLOAD_")

    bucket: str | None = Field(
        default=None, description="Keep uploads in this S3/MinIO bucket (`bucket` or `s3://bucket/prefix`, with the "
        "DOCINGEST_S3_* settings) instead of the upload folder. Parts become S3 multipart-upload parts (S3 needs parts "
        "of at least 5 MiB but the last)."
    )
    deployment: str | None = Field(
        default=None, description="Run each upload's ingestion as a run of this Prefect deployment "
        "(`ingest-documents/local`), the priority choosing the work queue; without it the service runs the flow "
        "itself in one background worker."
    )
    dir: Path | None = Field(
        default=None, description="Folder for uploads in progress, the per-collection upload sources and jobs. "
        "Default <home>/uploads."
    )
    part_size: int = Field(default=8 * 1024 * 1024, ge=1024, description="Bytes per upload part.")
    max_bytes: int = Field(default=200 * 1024 * 1024, ge=1, description="Largest accepted upload.")
    allowed_types: list[str] | None = Field(
        default=None, description="Accepted file extensions (JSON list). Default: every format docingest ingests "
        "except macro-enabled and legacy binary Office files and RTF, which uploads never accept (core/formats.py)."
    )
    expiry_s: float = Field(
        default=24 * 3600, gt=0, description="Unfinished uploads are removed after this (with their parts); finished "
        "uploads' metadata too (their documents stay)."
    )
    quota_bytes: int | None = Field(
        default=None, ge=1, description="Bytes one user's unfinished uploads may hold (declared sizes). Default 5 x "
        "max_bytes."
    )
    job_concurrency: int = Field(
        default=2, ge=1, description="Embedded job mode: flow runs at once (each one collection's waiting uploads); "
        "a slow document in one collection does not hold uploads to another."
    )
    parse_timeout_s: float | None = Field(
        default=None, gt=0, description="Parse time limit per uploaded document (default: the ingest default, "
        "120 s); a document that passes it fails alone."
    )
    max_unfinished: int = Field(default=100, ge=1, description="Unfinished uploads one user may hold.")


class RateLimitSettings(_Section):
    """Per-user rate limits of the upload service (``DOCINGEST_RATE_LIMIT_*``)."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_RATE_LIMIT_")

    requests_per_min: int = Field(default=600, ge=1, description="Requests per user and minute.")
    uploads_per_min: int = Field(default=60, ge=1, description="New uploads per user and minute.")


class ServiceSettings(_Section):
    """The upload service's process (``DOCINGEST_SERVICE_*``)."""

    model_config = SettingsConfigDict(env_prefix="DOCINGEST_SERVICE_")

    malloc_arenas: int = Field(
        default=2, ge=0, description="glibc malloc arenas of `docingest serve` (0: glibc's default, eight per core). "
        "Fewer arenas keep less freed memory in a long-running service; MALLOC_ARENA_MAX, where set, wins."
    )


class DocingestSettings(_Section):
    """Settings for docingest: a few of their own (``DOCINGEST_<FIELD>``) and one section per concern."""

    home: Path = Field(
        default=Path(".docingest"),
        description="Working folder for embedded state (the embedded Qdrant store, uploads). Relative to the current "
        "directory.",
    )
    follow_symlinks: bool = Field(
        default=False, description="Local folders: also read files that symbolic links lead to outside the source "
        "root (the CLI's --follow-symlinks default). Off: such links are skipped and reported.")
    pushgateway_url: str | None = Field(
        default=None,
        description="Prometheus Pushgateway (e.g. http://pushgateway:9091) that each run pushes its metrics to "
        "every 15 s and at its end. Default: metrics are not pushed.",
    )
    disabled_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Plugins to ignore, by entry-point name (comma-separated), e.g. one that "
        "is broken.",
    )

    qdrant: QdrantSettings = Field(default_factory=QdrantSettings, description="Qdrant and the embedded store.")
    embed: EmbedSettings = Field(default_factory=EmbedSettings, description="The embedding model.")
    s3: S3Settings = Field(default_factory=S3Settings, description="S3-compatible storage.")
    git: GitSettings = Field(default_factory=GitSettings, description="Git repository sources.")
    prefect: PrefectSettings = Field(default_factory=PrefectSettings, description="How runs use Prefect.")
    dask: DaskSettings = Field(default_factory=DaskSettings, description="The Dask cluster of task_runner=dask.")
    parse: ParseSettings = Field(default_factory=ParseSettings, description="The parse workers' processes.")
    jwt: JwtSettings = Field(default_factory=JwtSettings, description="The upload service's bearer tokens.")
    upload: UploadSettings = Field(default_factory=UploadSettings, description="The upload service's uploads.")
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings, description="Per-user rate limits.")
    service: ServiceSettings = Field(default_factory=ServiceSettings, description="The upload service's process.")

    @field_validator("disabled_plugins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    def resolved_qdrant_path(self) -> Path:
        return self.qdrant.path if self.qdrant.path is not None else self.home / "qdrant"


SECTIONS: dict[str, type[_Section]] = {
    name: info.annotation for name, info in DocingestSettings.model_fields.items()  # type: ignore[misc]
    if isinstance(info.annotation, type) and issubclass(info.annotation, _Section)
}


def env_name(section: type[BaseSettings], field: str) -> str:
    """The environment variable a section's field reads: its documented alias, else the section prefix + FIELD."""
    return _env_names(section, field)[0]


def _env_names(section: type[BaseSettings], field: str) -> list[str]:
    info: FieldInfo = section.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        named = [choice for choice in alias.choices if isinstance(choice, str) and choice.isupper()]
        if named:
            return named
    return [f"{section.model_config.get('env_prefix', '')}{field}".upper()]


def env_names() -> Iterator[tuple[str, str]]:
    """Every variable docingest's settings read (alternative names too, e.g. AWS_ACCESS_KEY_ID) with its place
    (``qdrant.url``), the root's own fields first."""
    for name in DocingestSettings.model_fields:
        if name not in SECTIONS:
            for env in _env_names(DocingestSettings, name):
                yield env, name
    for section_name, section in SECTIONS.items():
        for name in section.model_fields:
            for env in _env_names(section, name):
                yield env, f"{section_name}.{name}"


def describe_error(exc: ValidationError) -> str:
    """``DOCINGEST_UPLOAD_PART_SIZE: Input should be ...`` for the first error of a settings validation."""
    first = exc.errors()[0]
    section: type[BaseSettings] = next((s for s in SECTIONS.values() if s.__name__ == exc.title), DocingestSettings)
    where = str(first["loc"][0]) if first["loc"] else ""
    if where.isupper():  # an alias: the variable's own name
        return f"{where}: {first['msg']}"
    if where in SECTIONS and len(first["loc"]) > 1:  # given to the root as a section's dict
        section, where = SECTIONS[where], str(first["loc"][1])
    name = env_name(section, where) if where in section.model_fields else f"DOCINGEST_{where.upper()}"
    return f"{name}: {first['msg']}"


@lru_cache(maxsize=1)
def get_settings() -> DocingestSettings:
    """The settings of this process (cached; call ``get_settings.cache_clear()`` after changing the environment)."""
    return DocingestSettings()
