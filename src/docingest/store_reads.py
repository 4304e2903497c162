"""What the holder of an embedded store answers on its read socket (docingest.store_socket): search, export and
evaluate, run in the holder's process on the store it holds. Imported by every module that holds stores for long (the
flow, the watch, the service), which registers it for each embedded store the process opens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from docingest import store_socket
from docingest.core.store.backend import HOLD_HOOKS
from docingest.exceptions import ConfigurationError


def answer(op: str | None, args: dict[str, Any], root: Path, send: Callable[[dict[str, Any]], None]) -> Any:
    """Run one read request on the store this process holds at ``root``."""
    from docingest.targets import QdrantTarget, open_store

    qdrant = QdrantTarget(path=str(root))
    if op == "search":
        from docingest.retrieval import search

        results = search(args["query"], args["collection"], limit=int(args.get("limit", 5)), qdrant=qdrant,
                         model=args.get("model"), mode=args.get("mode"), fusion=args.get("fusion", "rrf"))
        return {"hits": [hit.model_dump() for hit in results], "mode": results.mode, "note": results.note}
    if op == "export":
        from docingest.export import points_of

        written = 0
        for line in points_of(open_store(qdrant), args["collection"], bool(args.get("vectors"))):
            send({"point": line})
            written += 1
        return written
    if op == "evaluate":
        from docingest.evaluate import evaluate

        return evaluate(qdrant=qdrant, **args).model_dump(mode="json")
    raise ConfigurationError(f"unknown read request {op!r}")


def _held(root: Path) -> None:
    store_socket.serve(root, answer)


if not any(hook[0] is _held for hook in HOLD_HOOKS):
    HOLD_HOOKS.append((_held, store_socket.stop))
