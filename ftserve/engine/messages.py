"""What crosses into the batcher thread: a request's rows (Job) and the typed messages of its inbox."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from ftserve.engine.adapter_files import LoadedAdapter
from ftserve.engine.generation import Row

Done = Callable[[BaseException | None], None]


@dataclass
class Job:
    """One request's rows for one model; `done` is called once, from the scheduler thread."""

    base: str
    model: str  # the public model name, for error messages
    adapter: str | None  # adapter key within the base; None = the base itself
    locate: Callable[[], Path | LoadedAdapter | None] | None  # finds the adapter (AdapterRef.locate); None: the base
    rows: list[Row]
    done: Done
    submitted: float = field(default_factory=time.monotonic)
    remaining: int = 0
    failed: bool = False  # a row failed: `done(error)` was called, its other rows are dropped
    # Throughput work (Batch API lines): admitted in groups while the batch runs, not one row at a time.
    background: bool = False


@dataclass(frozen=True)
class Submit:
    job: Job


@dataclass(frozen=True)
class Loaded:
    """The loader thread's result for (base, adapter): the adapter's tensors or why they could not be read."""

    key: tuple[str, str]
    result: LoadedAdapter | BaseException


@dataclass(frozen=True)
class Unload:
    base: str
    adapter: str


@dataclass(frozen=True)
class ListResident:
    answer: Future[list[tuple[str, str]]]


@dataclass(frozen=True)
class Stop:
    pass


Message = Submit | Loaded | Unload | ListResident | Stop
