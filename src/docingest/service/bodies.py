"""Request bodies are bounded while they stream in (pure ASGI): a declared ``Content-Length`` over the route's limit is
refused before anything is read, and a body sent without one (chunked) is cut off with 413 as soon as it passes the
limit. Parts may be ``upload_part_size`` bytes, one-request documents ``upload_max_bytes`` plus room for the form's
headers, and every other body (JSON) ``JSON_BODY_BYTES``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from docingest.settings import DocingestSettings

JSON_BODY_BYTES = 64 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, "request body too large")


class BodyLimit:
    """ASGI middleware: ``limit_for(path)`` gives the largest body a path takes."""

    def __init__(self, app: ASGIApp, settings: DocingestSettings) -> None:
        self.app, self.settings = app, settings

    def limit_for(self, path: str) -> int:
        if path.startswith("/api/v1/uploads/") and "/parts/" in path:
            return self.settings.upload.part_size
        if path.rstrip("/") == "/api/v1/documents":
            return self.settings.upload.max_bytes + FORM_OVERHEAD_BYTES
        return JSON_BODY_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            response = JSONResponse({"detail": "request body too large"}, status_code=413,
                                    headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        return await self.app(scope, bounded_receive, send)


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming where and what, never echoing the input (it may be megabytes, or someone else's secret)."""
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200], "type": e.get("type", "")}
              for e in exc.errors()[:20]]
    return JSONResponse({"detail": errors}, status_code=422)
