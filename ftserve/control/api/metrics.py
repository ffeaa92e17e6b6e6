"""/metrics (Prometheus exposition) and the middleware that counts completion requests by status."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftserve.core.endpoints import ENDPOINTS
from ftserve.core.metrics import REQUESTS


def render() -> tuple[bytes, str]:
    """The exposition text of every metric and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


def install(app: FastAPI) -> None:
    """Serve /metrics and count completion requests by endpoint and status (served here or proxied)."""

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    def metrics_endpoint() -> Response:
        body, content_type = render()
        return Response(body, media_type=content_type)

    app.add_middleware(CountRequests)


class CountRequests:
    """Count completion requests by endpoint and status code (served here or proxied)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_post = scope["type"] == "http" and scope["method"] == "POST"
        served = ENDPOINTS.get(scope["path"]) if is_post else None
        endpoint = served.metric_label if served else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before responding

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            REQUESTS.labels(endpoint, str(status)).inc()
