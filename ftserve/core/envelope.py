"""The one table of errors to responses: each kind of domain error (core/errors.py) gets its HTTP status and
OpenAI's {"error": {message, type, param, code}}; the api's handlers, streams and batch lines all use it."""

from __future__ import annotations

from typing import Any

from ftserve.core import errors

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
INTERNAL = "The server had an error while processing your request."
# An error never echoes more than this of what the client sent (a 20 MB id must not make a 20 MB 404).
MAX_MESSAGE_CHARS = 2000
MAX_PARAM_CHARS = 256


def _cap(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… (truncated from {len(text)} characters)"


def body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": _cap(message, MAX_MESSAGE_CHARS),
            "type": type,
            "param": _cap(param, MAX_PARAM_CHARS),
            "code": code,
        }
    }


def envelope(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, envelope) for any exception; an unexpected one is a 500 that reveals nothing of its text."""
    if isinstance(exc, errors.ServiceError):
        for kind, status, type_ in _STATUS:
            if isinstance(exc, kind):
                return status, body(exc.message, type_, exc.param, exc.code)
        return 500, body(exc.message, "server_error", exc.param, exc.code)
    return 500, body(INTERNAL, "server_error", None, "internal_error")
