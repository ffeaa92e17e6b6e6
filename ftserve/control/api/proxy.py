"""The api role's path to a separate inference role: every endpoint of the inference role (core/endpoints) is
forwarded as they are (headers, body, streamed response) to `inference_url`, so clients keep one base URL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from ftserve.core.endpoints import ENDPOINTS
from ftserve.core.errors import UpstreamUnavailable

# Hop-by-hop headers (RFC 9110 §7.6.1) and ones httpx recomputes must not be copied across.
_SKIP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}


def install(app: FastAPI, inference_url: str) -> None:
    """Add the forwarding routes and one shared httpx client, closed with the app."""
    client = httpx.AsyncClient(base_url=inference_url.rstrip("/"), timeout=httpx.Timeout(600, connect=10))
    app.state.inference_client = client
    app.state.shutdown.append(client.aclose)
    router = APIRouter(tags=["inference"])

    async def forward(request: Request) -> StreamingResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
        upstream = client.build_request(request.method, request.url.path, headers=headers, content=await request.body())
        try:
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"The inference service is unreachable: {exc}", code="inference_unavailable"
            ) from None
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _SKIP}
        # Closing the upstream response when our client goes away ends the upstream stream too,
        # so a disconnect still stops generation on the inference role.
        return StreamingResponse(
            _body(response),
            status_code=response.status_code,
            headers=out_headers,
            background=BackgroundTask(response.aclose),
        )

    for path, endpoint in ENDPOINTS.items():
        router.add_api_route(path, forward, methods=["POST"], include_in_schema=False)
        for method, route in endpoint.routes:  # the stored objects' reads and deletes (/v1/responses/{id})
            router.add_api_route(route, forward, methods=[method], include_in_schema=False)
    app.include_router(router)


async def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()
