"""One resident copy of each base model; trained adapters attached to it in an LRU of slots; all
generation goes through one continuous batcher (engine/scheduler.py). Callers name what to run with a
ModelRef (a base, and an adapter's key and directory); the engine knows no DB and no HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ftserve.core.config import EngineSettings
from ftserve.engine.adapter_files import LoadedAdapter
from ftserve.engine.adapters import AdapterCache
from ftserve.engine.attention import use_engine_attention
from ftserve.engine.constraint import Constraint
from ftserve.engine.errors import AdapterLoadError
from ftserve.engine.generation import DecodeBatch, Listener, Row, attach
from ftserve.engine.grammar import Grammars
from ftserve.engine.lora import LoraContext, SlotTable
from ftserve.engine.messages import Done, Job
from ftserve.engine.scheduler import Resident, Scheduler

__all__ = ["AdapterLoadError", "AdapterRef", "BaseLoader", "InferenceEngine", "LoadedAdapter", "ModelRef"]


@dataclass(frozen=True)
class AdapterRef:
    """An adapter to apply: its key within the base, and how to find it: called by the loader thread only when
    the adapter is not resident; its directory (it may fetch it from a remote store), or its tensors already in
    memory (a training process's current LoRA weights), or None: not servable."""

    key: str
    locate: Callable[[], Path | LoadedAdapter | None]


@dataclass(frozen=True)
class ModelRef:
    """What a request runs on: its public name (for errors), the base, and an adapter unless it is the base."""

    name: str
    base: str
    adapter: AdapterRef | None = None


# Loads a base by name onto a device: its model, tokenizer and stop set (every token that ends generation).
# The serving role binds models/bases.load_for_generation to its settings; the engine imports no model code.
BaseLoader = Callable[[str, torch.device], tuple[PreTrainedModel, PreTrainedTokenizerBase, set[int]]]


class InferenceEngine:
    """Serves generation for bases and adapters; thread-safe; every forward pass runs in the batcher thread."""

    def __init__(self, config: EngineSettings, load_base: BaseLoader, device: torch.device) -> None:
        self.config = config
        self._load_base = load_base
        self.device = device
        self._bases: dict[str, Resident] = {}
        self._load_lock = threading.Lock()
        self._scheduler: Scheduler | None = None

    @property
    def scheduler(self) -> Scheduler:
        with self._load_lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self._bases, self.config.batch_window_ms / 1000, self.config.max_batch_rows)
            return self._scheduler

    def tokenizer(self, base: str) -> PreTrainedTokenizerBase:
        return self.resident(base).tokenizer

    def resident(self, base: str) -> Resident:
        """The base in memory, loaded on first use (in the caller's thread, once)."""
        res = self._bases.get(base)
        if res is not None:
            return res
        with self._load_lock:
            if base not in self._bases:
                model, tok, stops = self._load_base(base, self.device)
                use_engine_attention(model)
                model.eval()
                model.requires_grad_(False)
                ctx = LoraContext(model.dtype, self.device)
                s = self.config
                batch = DecodeBatch(model, tok, stops, self.device, ctx)
                self._bases[base] = Resident(
                    model,
                    tok,
                    stops,
                    AdapterCache(SlotTable(model, ctx), s.adapter_cache_size, s.adapter_cache_bytes),
                    batch,
                    Grammars(tok, batch.vocab, stops, s.grammar_cache_size),
                )
            return self._bases[base]

    def check_constraint(self, base: str, constraint: Constraint) -> None:
        """Compile the constraint for the base now (cached), in the caller's thread, never the batcher's;
        InvalidConstraint when the grammar library cannot compile it."""
        self.resident(base).grammars.compile(constraint)

    def submit(
        self,
        ref: ModelRef,
        rows: list[Row],
        done: Done,
        listen: Listener | None = None,
        cancelled: Callable[[], bool] | None = None,
        background: bool = False,
    ) -> None:
        """Queue a request's rows for generation; `done(error_or_None)` is called from the batcher thread when
        all finish, `listen` with each row's events (text deltas, then its finish) as they happen; the rows stop
        at the next step once `cancelled()` is true.

        Rows with a constraint get their grammar here (InvalidConstraint if it cannot be compiled).
        `background`: throughput work (a batch's lines), admitted into a running batch in groups."""
        res = self.resident(ref.base)
        adapter = None if ref.adapter is None else ref.adapter.key
        locate = None if ref.adapter is None else ref.adapter.locate
        attach(rows, adapter, listen, cancelled)
        for r in rows:
            if r.sampling.constraint is not None and r.state.grammar is None:
                r.state.grammar = res.grammars.row(r.sampling.constraint)  # compiled here, not in the batcher
        self.scheduler.submit(Job(ref.base, ref.name, adapter, locate, rows, done, background=background))

    async def generate(self, ref: ModelRef, rows: list[Row]) -> None:
        """Generate the rows (batched with every other request); raises the request's error, if any."""
        await generate_via(self.submit, ref, rows)

    def run(self, ref: ModelRef, rows: list[Row]) -> None:
        """Blocking form of generate, for scripts and tests."""
        run_via(self.submit, ref, rows)

    def unload(self, base: str, adapter: str) -> None:
        """Drop an adapter (its model was deleted) from memory, now or when its running rows finish."""
        if base in self._bases:
            self.scheduler.unload(base, adapter)

    def resident_adapters(self) -> list[tuple[str, str]]:
        """(base, adapter key) of every adapter in memory."""
        return [] if self._scheduler is None else self._scheduler.resident_adapters()

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()


Submit = Callable[[ModelRef, list[Row], Done], None]


async def generate_via(submit: Submit, ref: ModelRef, rows: list[Row]) -> None:
    """`generate` over any `submit` (this engine's, or another backend's): submit off the event loop, then await
    its `done`; raises the request's error, if any."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def done(error: BaseException | None) -> None:
        loop.call_soon_threadsafe(_settle, future, error)

    await loop.run_in_executor(None, submit, ref, rows, done)
    await future


def run_via(submit: Submit, ref: ModelRef, rows: list[Row]) -> None:
    """`run` (blocking) over any `submit`."""
    finished = threading.Event()
    errors: list[BaseException] = []

    def done(error: BaseException | None) -> None:
        if error is not None:
            errors.append(error)
        finished.set()

    submit(ref, rows, done)
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
