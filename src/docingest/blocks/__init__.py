"""Prefect blocks for docingest's connections (register with ``prefect block register -m docingest.blocks``)."""

from docingest.blocks.embedder import EmbedderSettings
from docingest.blocks.qdrant import QdrantCollection, QdrantConnection
from docingest.blocks.results import S3ResultStorage
from docingest.blocks.sources import GitRepositorySource, S3BucketSource, S3Credentials

__all__ = [
    "EmbedderSettings",
    "GitRepositorySource",
    "QdrantCollection",
    "QdrantConnection",
    "S3BucketSource",
    "S3Credentials",
    "S3ResultStorage",
]
