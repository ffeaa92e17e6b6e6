"""The one error type services raise; the api renders it as OpenAI's error envelope."""

from __future__ import annotations


class APIError(Exception):
    """An error with the HTTP status and the {message, type, param, code} OpenAI clients expect."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    """404 worded the same whether the object is missing or another org's."""
    return APIError(404, f"No such {kind}: '{ident}'", param=param, code=f"{kind}_not_found".replace(" ", "_"))


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)
