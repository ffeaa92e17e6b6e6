"""Reinforcement fine-tuning's sampler: ftserve's own inference engine (continuous batching, multi-LoRA slots),
run inside the training process over the policy's own base weights (a second module tree sharing their
storage, no copy), with the policy's current LoRA weights handed to it as tensors after every optimizer step:
no adapter export, no reload from disk. The only module of training that imports the engine."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from itertools import chain
from typing import cast

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ftserve.core.config import EngineSettings
from ftserve.engine.adapter_files import PREFIX, LoadedAdapter
from ftserve.engine.engine import AdapterRef, InferenceEngine, ModelRef
from ftserve.engine.generation import Row
from ftserve.engine.sampling import Sampling
from ftserve.models.special_tokens import stop_token_ids
from ftserve.training.methods.base import StepAbandoned

__all__ = ["STOP_POLL_SECONDS", "Rollouts", "Row", "Sampling", "base_view", "lora_snapshot"]

# How often a step waiting on its rollouts asks whether the job stopped (one small DB read each time): a cancel or
# pause lands within about this long plus a decode step, not at the end of a step that samples for minutes.
STOP_POLL_SECONDS = 1.0


def base_view(model: PeftModel) -> PreTrainedModel:
    """The training model's base as a separate module tree without LoRA layers (the engine wraps its own), every
    weight and buffer the very tensor the training model holds: frozen base weights, shared, not copied."""
    base = model.get_base_model()
    with torch.device("meta"):  # its own config: the engine sets its attention there, not on the policy's
        view = AutoModelForCausalLM.from_config(copy.deepcopy(base.config), dtype=base.dtype)
    named = chain(base.named_parameters(remove_duplicate=False), base.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        if ".lora_" in name:
            continue
        owner_name, _, leaf = name.replace(".base_layer", "").rpartition(".")
        owner = view.get_submodule(owner_name)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(tensor.detach(), requires_grad=False)
        else:
            owner._buffers[leaf] = tensor.detach()
    left = [n for n, t in chain(view.named_parameters(), view.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"the engine's view of the base lacks {left[:3]}")
    view.generation_config = base.generation_config
    return view


def lora_snapshot(model: PeftModel, dtype: torch.dtype) -> LoadedAdapter:
    """The policy's LoRA weights now, as the engine's slots take them: per module A [r, in] and B·scale [out, r]."""
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    nbytes = 0
    with torch.no_grad():
        for name, layer in model.named_modules():
            if not isinstance(layer, LoraLayer) or "default" not in layer.lora_A:
                continue
            lora_a, lora_b = cast(nn.ModuleDict, layer.lora_A)["default"], cast(nn.ModuleDict, layer.lora_B)["default"]
            a = cast(torch.Tensor, lora_a.weight).detach().to(dtype, copy=True)
            b = (cast(torch.Tensor, lora_b.weight).detach().float() * layer.scaling["default"]).to(dtype)
            modules[name.removeprefix(PREFIX)] = (a, b)
            nbytes += a.numel() * a.element_size() + b.numel() * b.element_size()
    return LoadedAdapter(modules, nbytes)


class Rollouts:
    """Samples completions of the policy as it stands after the last `publish`."""

    def __init__(
        self, model: PeftModel, tok: PreTrainedTokenizerBase, engine: EngineSettings, device: torch.device, job: str
    ) -> None:
        self.model, self.job = model, job
        view = base_view(model)
        self.dtype = view.dtype
        stops = stop_token_ids(view.generation_config, tok)
        self.base = f"{job}-policy"  # the engine's name for this base: the job's own view of it
        self.engine = InferenceEngine(engine, lambda _name, _device: (view, tok, stops), device)
        self.version = 0
        self.ref: ModelRef | None = None

    def publish(self) -> None:
        """Hand the policy's current LoRA weights to the engine (the previous version is dropped)."""
        snapshot = lora_snapshot(self.model, self.dtype)
        if self.ref is not None and self.ref.adapter is not None:
            self.engine.unload(self.base, self.ref.adapter.key)
        self.version += 1
        key = f"v{self.version}"
        self.ref = ModelRef(f"{self.job} policy v{self.version}", self.base, AdapterRef(key, lambda: snapshot))

    def sample(
        self,
        prompts: list[list[int]],
        n: int,
        sampling: Callable[[int], Sampling],
        on_group: Callable[[int, list[Row]], None] | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> list[list[Row]]:
        """`n` completions of each prompt (`sampling(k)` for the k-th row overall), all in the engine's batch at
        once; `on_group(i, rows)` runs as soon as prompt i's rows finish (from the engine's thread: keep it short,
        hand work to a pool), while the others still generate. Raises what failed a group. `stopped()` is asked
        every STOP_POLL_SECONDS while they generate: once it says so, every row leaves the engine's batch at its
        next decode step (no further group is handed on) and StepAbandoned is raised."""
        assert self.ref is not None, "publish the policy before sampling"
        groups = [[Row(p, sampling(i * n + k)) for k in range(n)] for i, p in enumerate(prompts)]
        if not groups:  # nothing to wait for (a gang rank whose share of a step is empty)
            return groups
        left = len(groups)
        finished = threading.Event()
        cancel = threading.Event()
        errors: list[BaseException] = []
        lock = threading.Lock()

        def done_for(i: int) -> Callable[[BaseException | None], None]:
            def done(error: BaseException | None) -> None:
                nonlocal left
                try:
                    if error is not None:
                        errors.append(error)
                    elif on_group is not None and not cancel.is_set():  # a cancelled group's rows are cut short
                        on_group(i, groups[i])
                except BaseException as exc:  # the waiting step raises it, not the engine's thread
                    errors.append(exc)
                finally:
                    with lock:
                        left -= 1
                        if left == 0:
                            finished.set()

            return done

        for i, rows in enumerate(groups):
            self.engine.submit(self.ref, rows, done_for(i), cancelled=cancel.is_set, background=True)
        while not finished.wait(STOP_POLL_SECONDS):
            if stopped is not None and stopped():
                cancel.set()
                # Within a decode step (a row still queued is dropped after its prefill): the engine holds none of
                # this step's rows once the step is abandoned, and a step run again starts on an idle batch.
                finished.wait()
                raise StepAbandoned("the job stopped while its rollouts were sampled")
        if errors:
            raise errors[0]
        return groups

    def close(self) -> None:
        self.engine.close()
