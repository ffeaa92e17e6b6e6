"""Domain errors: what went wrong for the user (message, param, stable code), never an HTTP status.

Every layer raises these (services, the engine, serving); app/api/errors.py alone turns a kind of error
into a status and OpenAI's envelope {"error": {message, type, param, code}}.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error the caller sees: a message, the parameter at fault, a stable code and an optional retry hint."""

    default_code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after


class InvalidRequest(ServiceError):
    """The request (a parameter, a file, the object's state) cannot be served as sent."""

    default_code = "invalid_value"


class Unauthenticated(ServiceError):
    """No valid API key."""


class PermissionDenied(ServiceError):
    """The caller may not do this to this object."""


class NotFound(ServiceError):
    """No such object for this caller (another org's object is reported exactly like a missing one)."""


class Conflict(ServiceError):
    """The request clashes with another one (an Idempotency-Key in use, say)."""


class PayloadTooLarge(ServiceError):
    """The request body is larger than the service accepts."""


class ServerFault(ServiceError):
    """The service failed while handling a valid request."""

    default_code = "internal_error"


class Unavailable(ServiceError):
    """The service cannot answer right now (shutting down, a dependency down); retrying later may work."""


class UpstreamUnavailable(ServiceError):
    """A service this one forwards to could not be reached."""


class TrainingError(Exception):
    """A failure the training side detected itself, with the stable code the job will carry."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


# The most of a client's value an error message quotes back (ids are ~30 characters; a 20 MB one is not).
QUOTE_CHARS = 100


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """value in quotes for an error message, cut to `limit` characters (saying how long it was)."""
    if len(value) <= limit:
        return f"'{value}'"
    return f"'{value[:limit]}…' ({len(value)} characters)"


def not_found(kind: str, ident: str, param: str | None = None) -> NotFound:
    """Worded the same whether the object is missing or another org's."""
    return NotFound(f"No such {kind}: {quote(ident)}", param=param, code=f"{kind}_not_found".replace(" ", "_"))


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)
