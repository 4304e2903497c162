"""Qdrant connection block: a server (URL + API key) or a folder of the embedded store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from docingest.core.store import QdrantLocation

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from docingest.core.store import QdrantStore

LOGO = "https://qdrant.tech/images/logo_with_text.png"
DOCS = "https://github.com/docingest/docingest#configuration"


class QdrantConnection(Block):
    """Where a Qdrant lives: a server (``url`` and ``api_key``) or a folder of the embedded store (``path``).

    Example:
        Load a saved connection and pass its name to the flow as ``qdrant_block``:
        ```python
        from docingest.blocks import QdrantConnection

        connection = QdrantConnection.load("BLOCK_NAME")
        store = connection.get_store()
        print(store.list_collections())
        ```
    """

    _block_type_name = "Docingest Qdrant Connection"
    _block_type_slug = "docingest-qdrant-connection"
    _logo_url = LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]

    url: str | None = Field(default=None, description="Qdrant server URL, e.g. http://qdrant:6333.")
    path: str | None = Field(default=None, description="Folder of the embedded store (Qdrant Edge), used when no URL "
                             "is set.")
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

    def get_store(self) -> QdrantStore:
        """The docingest store of this connection (one per process and location): collections, points, search."""
        from docingest.core.store import QdrantStore

        return QdrantStore(self.location())

    def get_client(self) -> QdrantClient:
        """A ``qdrant_client.QdrantClient`` for a server connection (the embedded store has no client: use
        :meth:`get_store`)."""
        from docingest.core.store.client import open_client
        from docingest.exceptions import ConfigurationError

        if not self.url:
            raise ConfigurationError("an embedded store has no qdrant-client: use get_store(), or set a server url")
        return open_client(self.location())


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

    def get_store(self) -> QdrantStore:
        """The docingest store of the collection's connection."""
        return self.connection.get_store()

    def get_client(self) -> QdrantClient:
        """A ``qdrant_client.QdrantClient`` for the collection's server connection."""
        return self.connection.get_client()
