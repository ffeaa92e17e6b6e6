"""The api's error handlers: every error, validation and HTTP ones included, becomes OpenAI's
{"error": {message, type, param, code}} through the one table in core/envelope.py."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftserve.control.db.session import domain_error, is_unavailable
from ftserve.core import errors
from ftserve.core.envelope import body
from ftserve.core.envelope import envelope as core_envelope
from ftserve.core.validation import explain

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


def request_schema(request: Request) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The schema of what the matched route takes: an object whose `body`, `query`, `path` and `header` hold the
    body model's own JSON schema (exact where OpenAPI's rounds large integers) and each parameter's, as the
    route's OpenAPI operation documents it; refs resolve in the document returned beside it."""
    document: dict[str, Any] = request.app.openapi()
    route = request.scope.get("route")
    path = getattr(route, "path_format", None)
    operation = (document.get("paths", {}).get(path) or {}).get(request.method.lower()) if path else None
    if not operation:
        return None, document
    sources: dict[str, Any] = {}
    for parameter in operation.get("parameters", []):
        where = sources.setdefault(parameter["in"], {"type": "object", "properties": {}})
        where["properties"][parameter["name"]] = parameter.get("schema", {})
    content = (operation.get("requestBody") or {}).get("content") or {}
    if content:
        sources["body"] = next(iter(content.values())).get("schema", {})
    model = _body_model(route)
    if model is not None:
        own = _model_schema(model)
        sources["body"] = own
        document = {**document, "$defs": own.get("$defs", {})}
    return {"type": "object", "properties": sources}, document


def _body_model(route: Any) -> type[BaseModel] | None:
    """The route's body model, when its body is one (a form's fields are the OpenAPI document's to tell)."""
    params = getattr(getattr(route, "dependant", None), "body_params", None) or []
    annotation = getattr(getattr(params[0], "field_info", None), "annotation", None) if len(params) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


@functools.cache
def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def validation_error(exc: RequestValidationError, request: Request | None = None) -> errors.InvalidRequest:
    """OpenAI answers bad input with 400, not FastAPI's 422: the first problem, in the user's words
    (core/validation: the field as they wrote it, what it takes, what was received)."""
    schema, document = request_schema(request) if request is not None else (None, None)
    return explain(list(exc.errors()), schema, document=document, body=getattr(exc, "body", None))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def _service_error(_request: Request, exc: errors.ServiceError) -> JSONResponse:
        return response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return response(validation_error(exc, request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        methods = allowed_methods(request) if exc.status_code == 405 else []
        if methods:
            headers["Allow"] = ", ".join(methods)
        message = http_message(request, exc.status_code, str(exc.detail), methods)
        content = body(message, _HTTP_TYPES.get(exc.status_code, "invalid_request_error"), None, None)
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


def http_message(request: Request, status: int, detail: str, methods: list[str]) -> str:
    """OpenAI's words for a path it does not serve (404) and a method a path does not take (405)."""
    said = f"({request.method} {request.url.path})"
    if status == 404 and detail == "Not Found":
        return f"Invalid URL {said}"
    if status == 405:
        takes = f"; it takes {' or '.join(methods)}" if methods else ""
        return f"Invalid method for URL {said}{takes}"
    return detail


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
