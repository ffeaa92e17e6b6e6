"""One resident copy of each base model; trained adapters attached to it in an LRU of slots; all
generation goes through one continuous batcher (worker/inference/scheduler.py)."""

from __future__ import annotations

import asyncio
import threading

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.config import Settings
from app.db.session import session_scope
from app.services import models as model_service
from app.services.models import ResolvedModel
from app.storage import Storage
from worker.inference.adapters import AdapterCache, AdapterLoadError
from worker.inference.generation import DecodeBatch, Row
from worker.inference.lora import LoraContext, SlotTable
from worker.inference.scheduler import Done, Job, Resident, Scheduler
from worker.models import special_tokens
from worker.models.bases import load_base, pick_device
from worker.training.export import is_complete

__all__ = ["AdapterLoadError", "InferenceEngine", "adapter_name", "stop_token_ids"]


def adapter_name(resolved: ResolvedModel) -> str:
    return f"{resolved.job_id}-{'final' if resolved.step is None else resolved.step}"


def parse_adapter_name(name: str) -> tuple[str, int | None]:
    """(job id, step or None for the final adapter): adapter_name read back."""
    job_id, _, step = name.rpartition("-")
    return job_id, None if step == "final" else int(step)


def stop_token_ids(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> set[int]:
    """Every token that ends generation: generation-config EOS ids, tokenizer EOS, chat end-of-turn."""
    return special_tokens.stop_token_ids(model.generation_config, tok)


class InferenceEngine:
    """Serves generation for bases and adapters; thread-safe; every forward pass runs in the batcher thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = Storage(settings)
        self.device = pick_device()
        self._bases: dict[str, Resident] = {}
        self._load_lock = threading.Lock()
        self._scheduler: Scheduler | None = None

    @property
    def scheduler(self) -> Scheduler:
        with self._load_lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(
                    self._bases, self.settings.batch_window_ms / 1000, self.settings.max_batch_rows
                )
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
                model, tok = load_base(self.settings, base, self.device)
                model.eval()
                model.requires_grad_(False)
                ctx = LoraContext(model.dtype, self.device)
                s = self.settings
                self._bases[base] = Resident(
                    model,
                    tok,
                    stop_token_ids(model, tok),
                    AdapterCache(SlotTable(model, ctx), s.adapter_cache_size, s.adapter_cache_bytes),
                    DecodeBatch(model, tok, stop_token_ids(model, tok), self.device, ctx),
                )
            return self._bases[base]

    def submit(self, resolved: ResolvedModel, rows: list[Row], done: Done) -> None:
        """Queue rows for generation; `done(error_or_None)` is called from the batcher thread when all finish."""
        self.resident(resolved.base)
        adapter, path = None, None
        if not resolved.is_base:
            assert resolved.job_id is not None
            adapter = adapter_name(resolved)
            candidate = self.storage.adapter_dir(resolved.job_id, resolved.step)
            # Only a directory the service derived and the exporter marked complete: safetensors, never pickle.
            path = candidate if is_complete(candidate) else None
        for r in rows:
            r.adapter = adapter
        self.scheduler.submit(Job(resolved.base, resolved.name, adapter, path, rows, done))

    async def generate(self, resolved: ResolvedModel, rows: list[Row]) -> None:
        """Generate the rows (batched with every other request); raises the request's error, if any."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, error)

        await loop.run_in_executor(None, self.submit, resolved, rows, done)
        await future

    def run(self, resolved: ResolvedModel, rows: list[Row]) -> None:
        """Blocking form of generate, for scripts and tests."""
        finished = threading.Event()
        errors: list[BaseException] = []

        def done(error: BaseException | None) -> None:
            if error is not None:
                errors.append(error)
            finished.set()

        self.submit(resolved, rows, done)
        finished.wait()
        if errors:
            raise errors[0]

    def unload(self, resolved: ResolvedModel) -> None:
        """Drop a (deleted) model's adapter from memory, now or when its running rows finish."""
        if not resolved.is_base and resolved.base in self._bases:
            self.scheduler.unload(resolved.base, adapter_name(resolved))

    def unload_deleted(self) -> int:
        """Unload resident adapters whose model no longer exists or was deleted; how many were unloaded.

        A separate inference process never hears of a deletion made through the api role: requests for
        the model already get 404 (resolution reads the DB), and this frees the memory too.
        """
        if self._scheduler is None:
            return 0
        resident = self._scheduler.resident_adapters()
        with session_scope() as session:
            servable = model_service.servable_adapters(session, {parse_adapter_name(n) for _, n in resident})
        gone = [(base, name) for base, name in resident if parse_adapter_name(name) not in servable]
        for base, name in gone:
            self._scheduler.unload(base, name)
        return len(gone)

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
