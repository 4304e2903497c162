"""The folders docingest writes to, checked before any work.

A home, store, cache or upload folder that cannot be written (a read-only mount, a full disk, a wrong owner) would
otherwise surface as a traceback from deep inside a run (``mkdir /data/docingest``); checked up front, it is one
ConfigurationError naming the folder and the setting that chose it (the CLI and the service exit 2 with that line,
a flow run fails with it).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from docingest.exceptions import ConfigurationError

if TYPE_CHECKING:
    from docingest.settings import DocingestSettings


@dataclass(frozen=True)
class Folder:
    """A folder a command will write to: its role for the message, and the setting that chose it."""

    path: Path
    role: str
    setting: str


def check_writable(*folders: Folder) -> None:
    """Create each folder if missing and write (then remove) a one-byte file in it; raise ConfigurationError on the
    first that fails."""
    for folder in folders:
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".docingest-write-check-", dir=folder.path)
            try:
                os.write(fd, b"\0")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigurationError(f"cannot write the {folder.role} folder {folder.path}: {reason} (chosen by "
                                     f"{folder.setting})") from None


def home_folder(settings: DocingestSettings) -> Folder:
    """DOCINGEST_HOME: run locks, git checkouts, the embedded store by default."""
    return Folder(Path(settings.home), "docingest home", "DOCINGEST_HOME")


def store_folder(path: Path, settings: DocingestSettings) -> Folder:
    """The embedded store's folder, and whichever setting put it there."""
    if settings.qdrant.path is not None and Path(settings.qdrant.path) == Path(path):
        setting = "DOCINGEST_QDRANT_PATH"
    elif Path(path) == settings.resolved_qdrant_path():
        setting = "DOCINGEST_HOME (the store is <home>/qdrant)"
    else:
        setting = "--qdrant-path or the run's qdrant parameter"
    return Folder(Path(path), "embedded store", setting)


def parse_cache_folder() -> Folder:
    """Prefect's local result storage, where parse results are cached when no result-storage block is set."""
    from prefect.settings import get_current_settings

    path = get_current_settings().results.local_storage_path
    return Folder(Path(path), "parse cache", "PREFECT_RESULTS_LOCAL_STORAGE_PATH (under PREFECT_HOME by default)")


def upload_folder(settings: DocingestSettings) -> Folder:
    if settings.upload.dir is not None:
        return Folder(Path(settings.upload.dir), "upload", "DOCINGEST_UPLOAD_DIR")
    return Folder(Path(settings.home) / "uploads", "upload", "DOCINGEST_HOME (uploads go to <home>/uploads)")
