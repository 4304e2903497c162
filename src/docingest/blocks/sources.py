"""Source blocks: S3-compatible credentials composed into a bucket source, and a git repository source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from docingest.blocks.qdrant import DOCS
from docingest.options import SourceOptions

if TYPE_CHECKING:
    from docingest.core.sources import Source

S3_LOGO = "https://min.io/resources/img/logo/MINIO_Bird.png"
GIT_LOGO = "https://git-scm.com/images/logos/downloads/Git-Icon-1788C.png"


class S3Credentials(Block):
    """Endpoint and keys of an S3-compatible store (AWS S3, MinIO, any endpoint).

    Example:
        ```python
        from docingest.blocks import S3Credentials

        credentials = S3Credentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Docingest S3 Credentials"
    _block_type_slug = "docingest-s3-credentials"
    _logo_url = S3_LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]

    endpoint: str | None = Field(
        default=None, description="Endpoint URL, e.g. http://minio:9000; empty for AWS S3."
    )
    access_key: SecretStr | None = Field(default=None, description="Access key id.")
    secret_key: SecretStr | None = Field(default=None, description="Secret access key.")
    region: str | None = Field(default=None, description="Region, if the store needs one.")

    def connect_args(self) -> dict:
        """Keyword arguments for docingest's minio client helpers (secrets revealed only here, never logged)."""
        return {"endpoint": self.endpoint, "region": self.region,
                "access_key": self.access_key.get_secret_value() if self.access_key else None,
                "secret_key": self.secret_key.get_secret_value() if self.secret_key else None}


class S3BucketSource(Block):
    """Documents under a prefix of an S3-compatible bucket, with the credentials block that reaches it.

    Example:
        ```python
        from docingest.blocks import S3BucketSource

        source = S3BucketSource.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Docingest S3 Bucket Source"
    _block_type_slug = "docingest-s3-bucket-source"
    _logo_url = S3_LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]

    credentials: S3Credentials = Field(default_factory=S3Credentials, description="How to reach the store.")
    bucket: str = Field(description="Bucket name.")
    prefix: str = Field(default="", description="Key prefix (folder) to ingest; empty for the whole bucket.")

    def source_uri(self) -> str:
        """The s3:// URI of this source (its scope in a collection)."""
        return f"s3://{self.bucket}/{self.prefix.strip('/')}".rstrip("/")

    def open(self, options: SourceOptions | None = None) -> Source:
        """A docingest Source for this bucket prefix."""
        from docingest.core.sources.s3 import S3Source

        return S3Source(self.source_uri(), options, **self.credentials.connect_args())


class GitRepositorySource(Block):
    """A folder of a git repository (GitLab, GitHub, any git URL) at a branch, tag or commit.

    Example:
        ```python
        from docingest.blocks import GitRepositorySource

        source = GitRepositorySource.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Docingest Git Repository Source"
    _block_type_slug = "docingest-git-repository-source"
    _logo_url = GIT_LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]

    url: str = Field(description="Repository URL, e.g. https://gitlab.example.com/team/docs.git.")
    ref: str = Field(default="HEAD", description="Branch, tag or commit.")
    path: str = Field(default="", description="Folder inside the repository, e.g. 30-Aprovados.")
    token: SecretStr | None = Field(default=None, description="Access token for HTTPS (GitLab/GitHub).")

    def source_uri(self) -> str:
        """The git+ URI of this source (its scope in a collection)."""
        return f"git+{self.url}@{self.ref}:{self.path.strip('/')}"

    def open(self, options: SourceOptions | None = None) -> Source:
        """A docingest Source for this repository folder."""
        from docingest.core.sources.git import GitSource
        from docingest.settings import get_settings

        return GitSource(self.url, self.ref, self.path, options, cache_dir=get_settings().home / "git",
                         token=self.token.get_secret_value() if self.token else None)


def open_source_block(name: str, options: SourceOptions | None = None) -> Source:
    """Open a saved source block by name (``NAME`` or ``<block-type-slug>/NAME``) as a docingest Source."""
    from docingest.exceptions import ConfigurationError

    if "/" in name:
        block = Block.load(name)
        if not hasattr(block, "open"):
            raise ConfigurationError(f"block {name!r} is not a docingest source block")
        return block.open(options)
    for kind in (S3BucketSource, GitRepositorySource):
        try:
            block = cast(Any, kind.load(name))  # from sync code: the block, not a coroutine
        except ValueError:
            continue
        return block.open(options)
    raise ConfigurationError(f"no docingest source block named {name!r} (save an S3BucketSource or GitRepositorySource)")
