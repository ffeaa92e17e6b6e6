"""The error envelope as a schema, so /docs documents every error response."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


def error_doc(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """An error response for the OpenAPI document: the envelope, and the Retry-After header if it is sent."""
    doc: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        doc["headers"] = _RETRY_AFTER
    return doc


# Shared by every router: the statuses the SDK maps to its exception classes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_doc("Invalid request (bad parameter or file); `code` names the problem"),
    401: error_doc("Missing or wrong API key"),
    404: error_doc("No such object, or it belongs to another organization"),
    409: error_doc("Conflict (e.g. Idempotency-Key reused or still in progress)", retry_after=True),
    413: error_doc("Upload larger than the limit"),
    500: error_doc("Server error"),
    503: error_doc("Temporarily unavailable (e.g. the database is unreachable); retry later", retry_after=True),
}
