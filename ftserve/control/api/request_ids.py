"""x-request-id on every response: the client's own, or a new one (pure ASGI, not BaseHTTPMiddleware,
which runs each request through extra tasks and memory streams: a tenth of the inference server's event
loop time under load)."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftserve.core.ids import new_id


class RequestId:
    """Every HTTP response carries x-request-id: the client's own, or a new one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = Headers(scope=scope).get("x-request-id") or new_id("req_", 24)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)
