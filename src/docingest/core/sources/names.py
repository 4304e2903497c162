"""Local file names for documents whose own names may not be legal on the local file system.

An S3 key may hold 1,024 bytes, newlines, ``..`` segments and characters a file system refuses; a git path may too.
Such a document is read into a private temporary folder under a name made here, which is always one plain path
component, so it can never write outside that folder; its real name stays in the payload's ``path``.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME_BYTES = 120  # well under the common 255-byte limit, leaving room for a client's temporary suffixes
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


def local_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """The last segment of ``name`` when it is a safe local file name; otherwise a short hash of the whole name
    followed by its extension (Docling recognises formats by extension)."""
    last = name.rsplit("/", 1)[-1]
    if (last not in ("", ".", "..") and not last.startswith(".") and not _UNSAFE.search(last)
            and len(last.encode("utf-8", "surrogatepass")) <= max_bytes and last == last.strip()):
        return last
    suffix = _SAFE_SUFFIX.search(last)
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"document-{digest}{suffix.group(0).lower() if suffix else ''}"


def is_hidden(path: str) -> bool:
    """Whether a '/'-separated path has a hidden segment (``.name``); ``.`` and ``..`` segments of an object key are
    parts of its name, not hidden."""
    return any(part.startswith(".") and part not in (".", "..") for part in path.split("/"))
