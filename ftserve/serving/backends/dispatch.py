"""The inference role's one backend: each base's requests go to the engine its registry entry names."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.engine.constraint import Constraint
from ftserve.engine.engine import InferenceEngine, ModelRef, generate_via, run_via
from ftserve.engine.generation import Listener, Row
from ftserve.engine.messages import Done
from ftserve.models.bases import load_for_generation, pick_device
from ftserve.serving.backends.base import Backend
from ftserve.serving.backends.vllm import VllmBackend


class Backends:
    """Routes by base: `builtin` bases to ftserve's engine, `vllm` bases to their vLLM servers (created
    only when the registry has such a base)."""

    def __init__(self, settings: Settings) -> None:
        self.builtin = InferenceEngine(settings.engine(), partial(load_for_generation, settings), pick_device())
        vllm_bases = {name: spec for name, spec in settings.base_models.items() if spec.backend == "vllm"}
        self.vllm = VllmBackend(settings, vllm_bases) if vllm_bases else None

    def _for(self, base: str) -> Backend:
        if self.vllm is not None and base in self.vllm.bases:
            return self.vllm
        return self.builtin

    def tokenizer(self, base: str) -> PreTrainedTokenizerBase:
        return self._for(base).tokenizer(base)

    def check_constraint(self, base: str, constraint: Constraint) -> None:
        self._for(base).check_constraint(base, constraint)

    def submit(
        self,
        ref: ModelRef,
        rows: list[Row],
        done: Done,
        listen: Listener | None = None,
        cancelled: Callable[[], bool] | None = None,
        background: bool = False,
    ) -> None:
        self._for(ref.base).submit(ref, rows, done, listen, cancelled, background)

    async def generate(self, ref: ModelRef, rows: list[Row]) -> None:
        await generate_via(self.submit, ref, rows)

    def run(self, ref: ModelRef, rows: list[Row]) -> None:
        run_via(self.submit, ref, rows)

    def unload(self, base: str, adapter: str) -> None:
        self._for(base).unload(base, adapter)

    def resident_adapters(self) -> list[tuple[str, str]]:
        vllm = [] if self.vllm is None else self.vllm.resident_adapters()
        return self.builtin.resident_adapters() + vllm

    def close(self) -> None:
        if self.vllm is not None:
            self.vllm.close()
        self.builtin.close()
