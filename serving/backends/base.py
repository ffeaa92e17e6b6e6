"""The interface the serving role drives generation through: routes, streaming, the Batch API and the sweep
see only this, whichever engine serves a base (engine.InferenceEngine, or vLLM servers)."""

from __future__ import annotations

import asyncio
import threading
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from engine.constraint import Constraint
from engine.engine import ModelRef
from engine.generation import Row
from engine.messages import Done


class Backend(Protocol):
    """Generation for bases and their adapters; thread-safe. `submit` never raises for a request's own
    failure: `done(error)` reports it (from another thread), so a batch's other lines go on."""

    def tokenizer(self, base: str) -> PreTrainedTokenizerBase: ...

    def check_constraint(self, base: str, constraint: Constraint) -> None:
        """Compile a row's constraint for the base now (cached): engine.errors.InvalidConstraint when refused."""
        ...

    def submit(self, ref: ModelRef, rows: list[Row], done: Done, background: bool = False) -> None: ...

    async def generate(self, ref: ModelRef, rows: list[Row]) -> None: ...

    def run(self, ref: ModelRef, rows: list[Row]) -> None: ...

    def unload(self, base: str, adapter: str) -> None: ...

    def resident_adapters(self) -> list[tuple[str, str]]: ...

    def close(self) -> None: ...


async def generate_via(backend: Backend, ref: ModelRef, rows: list[Row]) -> None:
    """`generate` for any backend: submit, then await its `done`; raises the request's error, if any."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def done(error: BaseException | None) -> None:
        loop.call_soon_threadsafe(_settle, future, error)

    await loop.run_in_executor(None, backend.submit, ref, rows, done)
    await future


def run_via(backend: Backend, ref: ModelRef, rows: list[Row]) -> None:
    """`run` (blocking) for any backend."""
    finished = threading.Event()
    errors: list[BaseException] = []

    def done(error: BaseException | None) -> None:
        if error is not None:
            errors.append(error)
        finished.set()

    backend.submit(ref, rows, done)
    finished.wait()
    if errors:
        raise errors[0]


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
