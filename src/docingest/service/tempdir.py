"""The service's own temporary folder: ``<system temp>/docingest-serve-<pid>-<random>``, made the process's (and its parse
workers') ``TMPDIR`` by ``docingest serve`` and removed at shutdown. Spooled form files, checked S3 downloads and
multiprocessing's ``pymp-*`` folders land there, so none outlives the service (uvicorn ends the process by
re-raising SIGTERM, which skips the exit hooks that would remove them). Folders of services that are gone (killed)
are removed at the next start. The path stays short: multiprocessing puts Unix sockets in it (108 bytes at most)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

PREFIX = "docingest-serve-"
_active: Path | None = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def use_private() -> Path:
    """Make a new ``<system temp>/docingest-serve-<pid>-<random>`` (mode 0700, made by ``tempfile.mkdtemp``, so no
    other user can have planted it) this process's temporary folder; call it before anything made a temporary file.
    Folders of this user's services that are gone are removed."""
    global _active
    base = Path(tempfile.gettempdir())
    for stale in base.glob(PREFIX + "*"):
        pid = stale.name[len(PREFIX):].split("-", 1)[0]
        try:
            info = stale.lstat()
        except OSError:
            continue
        if (pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and stat.S_ISDIR(info.st_mode)
                and info.st_uid == os.getuid()):
            shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
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
