"""Exception handlers: every error response is {"error": {message, type, param, code}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import APIError

log = logging.getLogger(__name__)

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def _loc_to_param(loc: tuple[object, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers bad input with 400, not FastAPI's 422.
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        param = _loc_to_param(tuple(first.get("loc", ())))
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        err = APIError(400, message, param=param, code="invalid_value")
        if first.get("type") == "missing":
            err.code = "missing_required_parameter"
        elif first.get("type") == "json_invalid":
            err.code = "invalid_json"
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = APIError(
            exc.status_code, str(exc.detail), type=_TYPES.get(exc.status_code, "invalid_request_error"), code=code
        )
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        err = APIError(
            500, "The server had an error while processing your request.", type="server_error", code="internal_error"
        )
        return JSONResponse(err.body(), status_code=500)
