"""The one place errors become responses: each kind of domain error (app/errors.py) gets its HTTP status,
and every error, validation and streamed ones included, is OpenAI's {"error": {message, type, param, code}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors

log = logging.getLogger(__name__)

# Kind of error -> (HTTP status, OpenAI's `type`); the SDK picks its exception class by the status.
_STATUS: list[tuple[type[errors.ServiceError], int, str]] = [
    (errors.InvalidRequest, 400, "invalid_request_error"),
    (errors.Unauthenticated, 401, "invalid_request_error"),
    (errors.PermissionDenied, 403, "permission_error"),
    (errors.NotFound, 404, "invalid_request_error"),
    (errors.Conflict, 409, "conflict_error"),
    (errors.PayloadTooLarge, 413, "invalid_request_error"),
    (errors.UpstreamUnavailable, 502, "server_error"),
    (errors.Unavailable, 503, "server_error"),
    (errors.ServerFault, 500, "server_error"),
]
_HTTP_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    409: "conflict_error",
    429: "rate_limit_error",
}
INTERNAL = "The server had an error while processing your request."


def body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def envelope(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, envelope) for any exception; an unexpected one is a 500 that reveals nothing of its text."""
    if isinstance(exc, errors.ServiceError):
        for kind, status, type_ in _STATUS:
            if isinstance(exc, kind):
                return status, body(exc.message, type_, exc.param, exc.code)
        return 500, body(exc.message, "server_error", exc.param, exc.code)
    return 500, body(INTERNAL, "server_error", None, "internal_error")


def response(exc: BaseException) -> JSONResponse:
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
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        content = body(str(exc.detail), _HTTP_TYPES.get(exc.status_code, "invalid_request_error"), None, code)
        return JSONResponse(content, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return response(exc)
