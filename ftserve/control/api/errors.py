"""The api's error handlers: every error, validation and HTTP ones included, becomes OpenAI's
{"error": {message, type, param, code}} through the one table in core/envelope.py."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftserve.control.db.session import domain_error, is_unavailable
from ftserve.core import errors
from ftserve.core.envelope import body
from ftserve.core.envelope import envelope as core_envelope

log = logging.getLogger(__name__)

_HTTP_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def envelope(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, envelope) for any exception, an unreachable database included (503)."""
    return core_envelope(domain_error(exc))


def response(exc: BaseException) -> JSONResponse:
    exc = domain_error(exc)
    status, content = envelope(exc)
    headers = None
    if isinstance(exc, errors.ServiceError) and exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    return JSONResponse(content, status_code=status, headers=headers)


def _loc_to_param(loc: tuple[object, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> errors.InvalidRequest:
    """OpenAI answers bad input with 400, not FastAPI's 422: the first problem, naming its parameter."""
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
    param = _loc_to_param(tuple(first.get("loc", ())))
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    code = {"missing": "missing_required_parameter", "json_invalid": "invalid_json"}.get(
        str(first.get("type")), "invalid_value"
    )
    return errors.InvalidRequest(message, param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def _service_error(_request: Request, exc: errors.ServiceError) -> JSONResponse:
        return response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        content = body(str(exc.detail), _HTTP_TYPES.get(exc.status_code, "invalid_request_error"), None, code)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405 and (methods := allowed_methods(request)):
            headers["Allow"] = ", ".join(methods)
        return JSONResponse(content, status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        # Handled here rather than as an unexpected error, so an outage is a 503 and not a logged crash.
        if is_unavailable(exc):
            log.warning("database unreachable: %s", type(exc).__name__)
        else:
            log.exception("database error", exc_info=exc)
        return response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return response(exc)


def _flat_routes(app: FastAPI) -> Iterable[Any]:
    """Every route, routers included (newer FastAPI nests included routers; older ones flatten them)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - FastAPI before nested included routers
        return list(app.router.routes)
    return list(iter_route_contexts(app.router.routes))


def allowed_methods(request: Request) -> list[str]:
    """Every method the resource at this path supports: the routes sharing the path template of the first
    route that matches it (Starlette's 405 names only that one route's methods)."""
    path, root = request.scope.get("path", ""), request.scope.get("root_path", "")
    path = path[len(root) :] if root and path.startswith(root) else path
    routes = [r for r in _flat_routes(request.app) if getattr(r, "path_regex", None) is not None]
    first = next((r for r in routes if r.path_regex.match(path)), None)
    if first is None:
        return []
    methods: set[str] = set()
    for route in routes:
        if route.path_format == first.path_format:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
