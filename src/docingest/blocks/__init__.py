"""Prefect blocks for docingest's connections (register with ``prefect block register -m docingest.blocks``)."""

from docingest.blocks.embedder import EmbedderSettings
from docingest.blocks.qdrant import QdrantConnection
from docingest.blocks.sources import GitRepositorySource, S3BucketSource, S3Credentials

__all__ = ["EmbedderSettings", "GitRepositorySource", "QdrantConnection", "S3BucketSource", "S3Credentials"]
