"""Document sources: where documents are listed and read from."""

from docingest.core.sources.base import Source, open_source
from docingest.core.sources.local import LocalFolderSource

__all__ = ["LocalFolderSource", "Source", "open_source"]
