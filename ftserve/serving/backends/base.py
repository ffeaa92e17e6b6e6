"""The interface the serving role drives generation through: routes, streaming, the Batch API and the sweep
see only this, whichever engine serves a base (engine.InferenceEngine, or vLLM servers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from ftserve.engine.constraint import Constraint
from ftserve.engine.engine import ModelRef
from ftserve.engine.generation import Listener, Row
from ftserve.engine.messages import Done


class Backend(Protocol):
    """Generation for bases and their adapters; thread-safe. `submit` never raises for a request's own
    failure: `done(error)` reports it (from another thread), so a batch's other lines go on."""

    def tokenizer(self, base: str) -> PreTrainedTokenizerBase: ...

    def check_constraint(self, base: str, constraint: Constraint) -> None:
        """Compile a row's constraint for the base now (cached): engine.errors.InvalidConstraint when refused."""
        ...

    def submit(
        self,
        ref: ModelRef,
        rows: list[Row],
        done: Done,
        listen: Listener | None = None,
        cancelled: Callable[[], bool] | None = None,
        background: bool = False,
    ) -> None:
        """Queue a request's rows; `done(error_or_None)` once all finish, `listen` with each row's events (text
        deltas, then its finish), rows stopped once `cancelled()` is true (engine.InferenceEngine.submit)."""
        ...

    async def generate(self, ref: ModelRef, rows: list[Row]) -> None: ...

    def run(self, ref: ModelRef, rows: list[Row]) -> None: ...

    def unload(self, base: str, adapter: str) -> None: ...

    def resident_adapters(self) -> list[tuple[str, str]]: ...

    def close(self) -> None: ...
