"""Qdrant connection block: a server (URL + API key) or a local-mode folder."""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from docingest.core.store import QdrantLocation

LOGO = "https://qdrant.tech/images/logo_with_text.png"
DOCS = "https://github.com/docingest/docingest#configuration"


class QdrantConnection(Block):
    """Where a Qdrant lives: a server (``url`` and ``api_key``) or a local-mode folder (``path``).

    Example:
        Load a saved connection and pass its name to the flow as ``qdrant_block``:
        ```python
        from docingest.blocks import QdrantConnection

        connection = QdrantConnection.load("BLOCK_NAME")
        client = connection.get_client()
        ```
    """

    _block_type_name = "Docingest Qdrant Connection"
    _block_type_slug = "docingest-qdrant-connection"
    _logo_url = LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]

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


class QdrantCollection(Block):
    """A collection on a Qdrant connection: what a deployment syncs into, saved once and named in runs.

    Example:
        ```python
        from docingest.blocks import QdrantCollection, QdrantConnection

        QdrantCollection(collection_name="handbook",
                         connection=QdrantConnection(url="http://qdrant:6333")).save("handbook")
        # docingest ingest ./docs --collection-block handbook
        collection = QdrantCollection.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Docingest Qdrant Collection"
    _block_type_slug = "docingest-qdrant-collection"
    _logo_url = LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]

    connection: QdrantConnection = Field(default_factory=QdrantConnection,
                                         description="The Qdrant that holds the collection.")
    collection_name: str = Field(description="Collection name (its manifest lives in <name>__manifest).")

    def get_client(self):
        """A qdrant_client.QdrantClient for the collection's connection (cached per process)."""
        return self.connection.get_client()
