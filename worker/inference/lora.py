"""Many LoRA adapters on one resident base: each wrapped Linear keeps every resident adapter in a slot,
and each batch row picks its slot (gathered batched matmuls, as in S-LoRA/punica), so one forward pass
serves rows of different adapters at about the cost of the base model."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

PREFIX = "base_model.model."
BASE_SLOT = 0  # all zeros: rows without an adapter use it


class UnsupportedAdapter(ValueError):
    """The adapter uses a PEFT feature this server does not apply (DoRA, embeddings, biases…)."""


@dataclass
class LoadedAdapter:
    """An adapter read into CPU memory: per module name, A [r, in] and B·scale [out, r]."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    nbytes: int


class LoraContext:
    """Which slot each row of the coming forward pass uses; shared by every wrapped layer of one base."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.rank = 0  # every wrapped layer's slots are padded to this rank
        self.single: int | None = None  # every row uses this one slot
        self.active: torch.Tensor | None = None  # the distinct adapter slots of a mixed batch
        self.mask: torch.Tensor | None = None  # [rows, active·r_max]: 1 where a row uses that slot's rank
        self.slots: torch.Tensor | None = None  # each row's slot, for layers narrower than active·r
        self.version = 0  # bumped when the active set or any slot's weights change
        self._key: tuple[int, ...] = ()
        self._masks: dict[int, torch.Tensor] = {}

    def set(self, slots: list[int], device: torch.device) -> None:
        """Prepare one forward pass: a single-adapter fast path, or the active slots and row mask."""
        distinct = sorted(set(slots))
        self.single = distinct[0] if len(distinct) == 1 and distinct[0] != BASE_SLOT else None
        active = [s for s in distinct if s != BASE_SLOT]
        rank = self.rank
        if len(distinct) == 1 or not active or rank == 0:
            self.active = self.mask = self.slots = None
            return
        self.slots = torch.tensor(slots, dtype=torch.long, device=device)
        key = tuple(active)
        if key != self._key:
            self._key, self.version = key, self.version + 1
            self.active = torch.tensor(active, dtype=torch.long, device=device)
        column = {s: i for i, s in enumerate(active)}
        mask = torch.zeros((len(slots), len(active), rank), dtype=self.dtype)
        for row, s in enumerate(slots):
            if s != BASE_SLOT:
                mask[row, column[s]] = 1
        self.mask = mask.view(len(slots), -1).to(device)
        self._masks = {}

    def mask_for(self, tokens: int) -> torch.Tensor:
        """The row mask repeated for each of a row's `tokens` positions (prefill), computed once per pass."""
        assert self.mask is not None
        if tokens == 1:
            return self.mask
        if tokens not in self._masks:
            self._masks[tokens] = self.mask.repeat_interleave(tokens, dim=0)
        return self._masks[tokens]

    def changed(self) -> None:
        self.version += 1


def features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a layer LoRA can wrap: nn.Linear, or transformers' Conv1D (GPT-2), whose weight is [in, out]."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


class MultiLoraLinear(nn.Module):
    """A frozen Linear (or Conv1D) plus a stack of LoRA slots: y = W x + B[slot] (A[slot] x)."""

    def __init__(self, base: nn.Module, ctx: LoraContext) -> None:
        super().__init__()
        self.base = base
        self.ctx = ctx
        shape = features(base)
        assert shape is not None
        w = base.weight
        assert isinstance(w, torch.Tensor)
        self.A = torch.zeros(1, 0, shape[0], dtype=w.dtype, device=w.device)
        self.B = torch.zeros(1, shape[1], 0, dtype=w.dtype, device=w.device)
        self.present: set[int] = set()
        self._version = -1
        self._a = self._bt = w.new_zeros(0)

    def reserve(self, slots: int, rank: int) -> None:
        """Grow the slot stack to hold `slots` slots of rank `rank` (new room is zeros)."""
        n, r = self.A.shape[0], self.A.shape[1]
        if slots <= n and rank <= r:
            return
        n2, r2 = max(n, slots), max(r, rank)
        a = self.A.new_zeros(n2, r2, self.A.shape[2])
        b = self.B.new_zeros(n2, self.B.shape[1], r2)
        a[:n, :r] = self.A
        b[:n, :, :r] = self.B
        self.A, self.B = a, b

    def put(self, slot: int, a: torch.Tensor, b: torch.Tensor) -> None:
        self.reserve(slot + 1, a.shape[0])
        self.A[slot].zero_()
        self.B[slot].zero_()
        self.A[slot, : a.shape[0]] = a.to(self.A)
        self.B[slot, :, : b.shape[1]] = b.to(self.B)
        self.present.add(slot)

    def clear(self, slot: int) -> None:
        if slot in self.present:
            self.A[slot].zero_()
            self.B[slot].zero_()
            self.present.discard(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        ctx = self.ctx
        if ctx.single is not None:
            if ctx.single not in self.present:
                return y
            return y + (x @ self.A[ctx.single].T) @ self.B[ctx.single].T
        if ctx.active is None or not self.present:
            return y
        if ctx.active.numel() * self.A.shape[1] > 2 * self.A.shape[2]:
            # Far more adapter columns than the layer is wide (tiny models, many adapters): gather each
            # row's own A and B and use batched matmuls instead, whose cost does not grow with adapters.
            assert ctx.slots is not None
            x3 = x.reshape(x.shape[0], -1, x.shape[-1])
            h = torch.bmm(x3, self.A[ctx.slots].transpose(1, 2))
            return y + torch.bmm(h, self.B[ctx.slots].transpose(1, 2)).view_as(y)
        # Mixed adapters: one matmul against the active slots' A stacked as rows, a mask that keeps each
        # row's own slot, one addmm against their B. Two GEMMs whatever the number of adapters; the
        # stacked copies are rebuilt only when the set of active slots changes.
        if self._version != ctx.version:
            self._a = self.A[ctx.active].reshape(-1, self.A.shape[2])
            self._bt = self.B[ctx.active].transpose(1, 2).reshape(-1, self.B.shape[1])  # [active·r, out]
            self._version = ctx.version
        x2 = x.reshape(-1, x.shape[-1])
        h = (x2 @ self._a.T) * ctx.mask_for(x2.shape[0] // ctx.mask.shape[0])  # type: ignore[union-attr]
        return torch.addmm(y.reshape(-1, y.shape[-1]), h, self._bt).view_as(y)


def wrap(model: nn.Module, name: str, ctx: LoraContext) -> MultiLoraLinear:
    """Replace the Linear at `name` with a MultiLoraLinear (once); returns the wrapper."""
    module = model.get_submodule(name)
    if isinstance(module, MultiLoraLinear):
        return module
    if features(module) is None:
        raise UnsupportedAdapter(f"module '{name}' is a {type(module).__name__}, not a Linear or Conv1D")
    parent_name, _, child = name.rpartition(".")
    wrapper = MultiLoraLinear(module, ctx)
    setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapper)
    return wrapper


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    # PEFT matches rank/alpha patterns as regexes against the end of the module name.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return default


def read_adapter(path: Path, dtype: torch.dtype) -> LoadedAdapter:
    """Read a PEFT LoRA adapter (safetensors only) into per-module (A, B·scale) tensors on the CPU."""
    config = json.loads((path / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise UnsupportedAdapter(f"peft_type {config.get('peft_type')} is not LoRA")
    for flag in ("use_dora", "modules_to_save"):
        if config.get(flag):
            raise UnsupportedAdapter(f"'{flag}' is not supported for serving")
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapter("LoRA biases are not supported for serving")
    alpha = float(config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora", False))
    alphas = dict(config.get("alpha_pattern") or {})
    tensors = load_file(str(path / "adapter_model.safetensors"), device="cpu")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key)
        if m is None or not m.group(1).startswith(PREFIX):
            raise UnsupportedAdapter(f"unexpected tensor '{key}'")
        pairs.setdefault(m.group(1).removeprefix(PREFIX), {})[m.group(2)] = t
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    nbytes = 0
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"} or ab["A"].shape[0] != ab["B"].shape[1]:
            raise UnsupportedAdapter(f"module '{name}' lacks a matching lora_A/lora_B pair")
        rank = ab["A"].shape[0]
        a_ = _pattern_value(alphas, name, alpha)
        scale = a_ / (math.sqrt(rank) if rslora else rank)
        a = ab["A"].to(dtype)
        b = (ab["B"].float() * scale).to(dtype)
        modules[name] = (a, b)
        nbytes += a.numel() * a.element_size() + b.numel() * b.element_size()
    if not modules:
        raise UnsupportedAdapter("the adapter holds no LoRA weights")
    return LoadedAdapter(modules, nbytes)


class SlotTable:
    """The wrapped layers of one base and which slot each resident adapter occupies."""

    def __init__(self, model: nn.Module, ctx: LoraContext) -> None:
        self.model = model
        self.ctx = ctx
        self.layers: dict[str, MultiLoraLinear] = {}
        self.free: list[int] = []
        self.next_slot = BASE_SLOT + 1

    def attach(self, adapter: LoadedAdapter) -> int:
        """Copy an adapter into a free slot (validating shapes first); returns the slot."""
        for name, (a, b) in adapter.modules.items():
            target = self.model.get_submodule(name)
            shape = features(target.base if isinstance(target, MultiLoraLinear) else target)
            if shape is None or (a.shape[1], b.shape[0]) != shape:
                raise UnsupportedAdapter(f"module '{name}' does not match the base model's shapes")
        slot = self.free.pop() if self.free else self._new_slot()
        for name, (a, b) in adapter.modules.items():
            if name not in self.layers:
                self.layers[name] = wrap(self.model, name, self.ctx)
            self.layers[name].put(slot, a, b)
        self.ctx.rank = max(self.ctx.rank, *(a.shape[0] for a, _ in adapter.modules.values()))
        for layer in self.layers.values():  # every layer indexes every slot, at one rank, for the row mask
            layer.reserve(self.next_slot, self.ctx.rank)
        self.ctx.changed()
        return slot

    def _new_slot(self) -> int:
        slot = self.next_slot
        self.next_slot += 1
        return slot

    def detach(self, slot: int) -> None:
        for layer in self.layers.values():
            layer.clear(slot)
        self.free.append(slot)
        self.ctx.changed()
