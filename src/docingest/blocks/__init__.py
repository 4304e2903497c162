"""Prefect blocks for docingest's connections (register with ``prefect block register -m docingest.blocks``)."""

from docingest.blocks.qdrant import QdrantConnection

__all__ = ["QdrantConnection"]
