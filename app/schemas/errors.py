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


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Shared by every router: the statuses the SDK maps to its exception classes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("Invalid request (bad parameter or file); `code` names the problem"),
    401: _doc("Missing or wrong API key"),
    404: _doc("No such object, or it belongs to another organization"),
    409: _doc("Conflict (e.g. Idempotency-Key reused or still in progress)"),
    413: _doc("Upload larger than the limit"),
    500: _doc("Server error"),
}
