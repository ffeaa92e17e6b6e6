"""Enforce the upload size caps while the body streams in, before anything is parsed or spooled."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftserve.control.api.errors import envelope
from ftserve.control.services.files import too_large
from ftserve.control.services.uploads import part_too_large
from ftserve.core.errors import ServiceError

# Multipart framing around the file part; a body larger than the cap plus this cannot fit.
MULTIPART_SLACK = 64 * 1024
# An Uploads API part has its own cap (max_upload_part_bytes), not the single-request file cap.
_PART_PATH = re.compile(r"^/v1/uploads/[^/]+/parts/?$")


class BodyLimit:
    """ASGI middleware: a request body over the limit gets a 413 as soon as it passes it.

    A declared Content-Length over the limit is refused before any byte is read; a chunked body is
    counted as it arrives, and once it passes the limit the app sees a disconnect and its own
    response is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, limit: int, part_limit: int | None = None) -> None:
        self.app = app
        self.cap = limit
        self.part_cap = limit if part_limit is None else part_limit

    @staticmethod
    def _reply(error: ServiceError) -> JSONResponse:
        status, content = envelope(error)
        return JSONResponse(content, status_code=status, headers={"connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        if _PART_PATH.match(scope.get("path", "")):
            limit, error = self.part_cap + MULTIPART_SLACK, part_too_large(self.part_cap)
        else:
            limit, error = self.cap + MULTIPART_SLACK, too_large(self.cap)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self._reply(error)(scope, receive, send)
            return
        seen = 0
        exceeded = False

        async def counted() -> Message:
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await self._reply(error)(scope, receive, send)
