"""Reads beside the process that owns an embedded store.

Only one process can open an embedded store (Qdrant Edge holds its WAL with an exclusive lock). The process that holds
it (``docingest watch``, ``docingest serve``, a running ``ingest``) answers read requests on a Unix socket in the store
folder, ``docingest.sock``: owner-only permissions, and a peer of another user is refused (SO_PEERCRED). ``docingest
search``, ``export``, ``eval`` and the Python ``docingest.search`` find the store held, ask the holder, and give the same
results and exit codes as when they open the store themselves. Writes (``ingest``, ``migrate``) still wait or exit 2.

The protocol: one JSON request line ``{"op": "search"|"export"|"evaluate", "args": {...}}``; the answer is JSON lines,
``{"point": {...}}`` for each exported point, then ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "...",
"kind": "configuration"|"store"|"internal"}``. This module is the transport; docingest.store_reads answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from docingest.exceptions import ConfigurationError, DocingestError, StoreError

SOCKET = "docingest.sock"
logger = logging.getLogger("docingest.store_socket")

_servers: dict[Path, _ReadServer] = {}
_lock = threading.Lock()


Answer = Callable[[str | None, dict[str, Any], Path, Callable[[dict[str, Any]], None]], Any]


class _ReadServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    store_root = Path()  # the store folder it answers for

    def __init__(self, path: str, answer: Answer) -> None:
        super().__init__(path, _Handler)
        self.answer = answer


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        uid = _peer_uid(self.request)
        if uid is not None and uid != os.getuid():
            self._send({"ok": False, "error": "refused: another user", "kind": "configuration"})
            return
        try:
            request = json.loads(self.rfile.readline(1 << 20) or b"{}")
            op, args = request.get("op"), request.get("args") or {}
            server = cast(_ReadServer, self.server)
            result = server.answer(op, args, server.store_root, self._send)
            self._send({"ok": True, "result": result})
        except ConfigurationError as exc:
            self._send({"ok": False, "error": str(exc), "kind": "configuration"})
        except StoreError as exc:
            self._send({"ok": False, "error": str(exc), "kind": "store"})
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception as exc:  # noqa: BLE001 - answered, never a dead socket
            logger.exception("a read request failed")
            self._send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "kind": "internal"})

    def _send(self, line: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    except (AttributeError, OSError):  # not Linux
        return None


# -- the holder's side ------------------------------------------------------------------------------------------------
def serve(root: Path, answer: Answer) -> None:
    """Answer reads of the store at ``root`` (this process just took its lock) with ``answer`` until it is
    released."""
    root = Path(root)
    with _lock:
        if root in _servers:
            return
        path = root / SOCKET
        staging = root / f".{SOCKET}.{os.getpid()}"
        for stale in (path, staging):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()  # we hold the store's lock: a socket left here is a dead holder's
        try:
            server = _ReadServer(str(staging), answer)
            os.chmod(staging, 0o600)
            os.replace(staging, path)
        except OSError as exc:  # a path too long for a Unix socket (108 bytes), a read-only folder: no sharing
            logger.warning("reads of %s cannot be shared with other processes: %s", root, exc)
            return
        server.store_root = root
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="docingest-reads",
                         daemon=True).start()
        _servers[root] = server


def stop(root: Path) -> None:
    """Stop answering for ``root`` (its lock is being released)."""
    with _lock:
        server = _servers.pop(Path(root), None)
    if server is None:
        return
    with contextlib.suppress(FileNotFoundError):
        (Path(root) / SOCKET).unlink()  # no new reader finds it from here on

    def end() -> None:
        server.shutdown()  # waits for the serving loop's next poll (up to 0.5 s): not on the caller's time
        server.server_close()

    # Measured: a blocking shutdown added 0.40 s to every close of a held store (each `docingest ingest`'s exit).
    threading.Thread(target=end, name="docingest-reads-stop", daemon=True).start()



# -- a reader's side ---------------------------------------------------------------------------------------------------
def socket_of(root: Path) -> Path | None:
    """The socket of the process holding the embedded store at ``root``, if there is one."""
    path = Path(root) / SOCKET
    return path if path.exists() else None


def ask(path: Path, op: str, args: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Send one request; yield the answer's lines (the last one has ``ok``). Errors are raised as the holder
    raised them: ConfigurationError (exit 2) or StoreError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise StoreError(f"the process holding {path.parent} does not answer on {path.name}: {exc}") from None
        sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        with sock.makefile("rb") as answers:
            for raw in answers:
                line = json.loads(raw)
                if "ok" not in line:
                    yield line
                    continue
                if not line["ok"]:
                    kind = line.get("kind")
                    error: type[DocingestError] = ConfigurationError if kind == "configuration" else StoreError
                    raise error(line["error"])
                yield line
                return
    raise StoreError(f"the process holding {path.parent} ended its answer early")


def result_of(path: Path, op: str, args: dict[str, Any]) -> Any:
    """The ``result`` of a request whose answer is one line."""
    for line in ask(path, op, args):
        if "ok" in line:
            return line["result"]
    raise StoreError("no answer")
