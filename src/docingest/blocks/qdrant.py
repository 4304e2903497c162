"""Qdrant connection block: a server (URL + API key) or a local-mode folder."""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from docingest.core.store import QdrantLocation


class QdrantConnection(Block):
    """Where a Qdrant lives. Give ``url`` for a server, or ``path`` for local (embedded) mode."""

    _block_type_name = "Docingest Qdrant Connection"
    _block_type_slug = "docingest-qdrant-connection"
    _logo_url = "https://qdrant.tech/images/logo_with_text.png"  # type: ignore[assignment]
    _description = "Connection to a Qdrant server (URL and API key) or a local-mode folder, for docingest."
    _documentation_url = "https://github.com/docingest/docingest#configuration"  # type: ignore[assignment]

    url: str | None = Field(default=None, description="Qdrant server URL, e.g. http://qdrant:6333.")
    path: str | None = Field(default=None, description="Folder for Qdrant local mode, used when no URL is set.")
    api_key: SecretStr | None = Field(default=None, description="API key of the Qdrant server.")
    timeout: float = Field(default=30.0, description="Request timeout in seconds.")
    prefer_grpc: bool = Field(default=False, description="Talk gRPC to the server instead of REST.")

    def location(self) -> QdrantLocation:
        """The connection as docingest's plain location object."""
        return QdrantLocation(
            url=self.url,
            path=Path(self.path) if self.path else None,
            api_key=self.api_key,
            timeout=self.timeout,
            prefer_grpc=self.prefer_grpc,
        )

    def get_client(self):
        """A qdrant_client.QdrantClient for this connection (cached per process)."""
        from docingest.core.store import get_client

        return get_client(self.location())
