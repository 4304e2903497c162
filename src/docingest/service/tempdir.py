"""The service's own temporary folder: ``<upload root>/tmp/<pid>``, made the process's (and its parse workers')
``TMPDIR`` by ``docingest serve`` and removed at shutdown. Spooled form files, checked S3 downloads and
multiprocessing's ``pymp-*`` folders land there, so none outlives the service in the system's temporary folder
(uvicorn ends the process by re-raising SIGTERM, which skips the exit hooks that would remove them). Folders of
processes that are gone (killed) are removed at the next start."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

_active: Path | None = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def use_private(root: Path) -> Path:
    """Make ``root/tmp/<pid>`` this process's temporary folder (before anything created a temporary file)."""
    global _active
    base = Path(root) / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.iterdir():
        if stale.name.isdigit() and int(stale.name) != os.getpid() and not _alive(int(stale.name)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = base / str(os.getpid())
    folder.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    _active = folder
    return folder


def remove() -> None:
    """Remove the private temporary folder (at shutdown; a no-op when none is in use)."""
    global _active
    if _active is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(_active, ignore_errors=True)
        _active = None
