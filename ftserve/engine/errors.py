"""The engine's errors, as domain errors (app/errors.py): serving maps them to the envelope like any other."""

from __future__ import annotations

from ftserve.core.errors import InvalidRequest, ServerFault, Unavailable


class AdapterLoadError(ServerFault):
    """A model's adapter could not be read or attached; only that model's requests fail with it."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(
            f"The adapter of model '{model}' could not be loaded: {reason}", param="model", code="adapter_load_failed"
        )


class GenerationFailed(ServerFault):
    """A forward pass failed; the requests with a row in it fail with this."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"Generation failed: {type(exc).__name__}: {exc}")


class EngineStopped(Unavailable):
    """The engine is shutting down; requests still waiting or running get this."""

    def __init__(self) -> None:
        super().__init__("The inference server is shutting down")


class InvalidConstraint(InvalidRequest):
    """The grammar library cannot compile a row's constraint (a schema feature it does not implement, a
    grammar that does not parse). Serving names the parameter it came from (`response_format`, a tool's
    parameters) when it turns this into a 400."""

    def __init__(self, message: str, kind: str = "json_schema") -> None:
        super().__init__(message, code="invalid_json_schema" if kind != "lark" else "invalid_grammar")
        self.kind = kind
