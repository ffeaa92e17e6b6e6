"""Many LoRA adapters on one resident base: each wrapped Linear keeps every resident adapter in a slot,
and each batch row picks its slot (rows grouped by slot for batched matmuls, as in S-LoRA/punica), so one
forward pass serves rows of different adapters at about the cost of the base model."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftserve.engine.adapter_files import LoadedAdapter, UnsupportedAdapter

BASE_SLOT = 0  # all zeros: rows without an adapter use it
# Below this many stacked adapter columns (adapters × rank), the stacked GEMMs cost less than the slot-major
# layout's gathers and copies (SmolLM2 decode on CPU: stacked wins at 8 × r8, ties at 16, loses at 32).
SLOT_MAJOR_COLUMNS = 128


class LoraContext:
    """How the rows of the coming forward pass map to slots; shared by every wrapped layer of one base.

    A pass runs one of three ways: every row on one slot (two thin matmuls); many adapters with rows
    spread evenly over the slots (rows gathered slot-major, then two batched matmuls against the slot
    stacks in place: FLOPs grow with rows, not with adapters, every resident slot's weights are read,
    and none are re-gathered when the batch's adapters change); or else the distinct slots' factors
    side by side with a row mask (two GEMMs whose width grows with the number of adapters: cheapest for
    a few)."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype = dtype  # the base's, which slot stacks are kept in
        self.device = device
        # Decode steps' batched matmuls run in fp32 on CPU: for their few rows per slot torch's CPU bf16 bmm
        # is about 2× slower than fp32. A prefill's many rows per slot run fastest in the base's dtype.
        self.decode_dtype = torch.float32 if device.type == "cpu" else dtype
        self.rank = 0  # every wrapped layer's slots are padded to this rank
        self.slot_count = 1  # every wrapped layer holds this many slots (BASE_SLOT included)
        self.single: int | None = None  # every row uses this one slot
        self.rows: torch.Tensor | None = None  # slot-major: the row at each of slot_count·width positions
        self.places: torch.Tensor | None = None  # slot-major: each row's position among them
        self.active: torch.Tensor | None = None  # stacked: the distinct adapter slots
        self.mask: torch.Tensor | None = None  # stacked: [rows, active·rank], 1 where a row uses that column
        self.version = 0  # bumped when the active set or any slot's weights change
        self._key: tuple[int, ...] = ()
        self._per_tokens: dict[int, tuple[torch.Tensor, ...]] = {}
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None
        self._scratch: dict[tuple[str, int], torch.Tensor] = {}

    def set(self, slots: list[int]) -> None:
        """Prepare one forward pass from each row's slot."""
        self.single = self.rows = self.places = self.active = self.mask = None
        self.release()
        distinct = sorted(set(slots))
        if distinct == [BASE_SLOT] or self.rank == 0:
            return
        if len(distinct) == 1:
            self.single = distinct[0]
            return
        members: dict[int, list[int]] = {s: [] for s in distinct}
        for row, s in enumerate(slots):
            members[s].append(row)
        width = max(len(m) for m in members.values())
        active = [s for s in distinct if s != BASE_SLOT]
        if len(active) * self.rank >= SLOT_MAJOR_COLUMNS and self.slot_count * width <= 2 * len(slots):
            rows = [0] * (self.slot_count * width)  # padding positions repeat row 0; their output is dropped
            places = [0] * len(slots)
            for s, ms in members.items():
                for j, row in enumerate(ms):
                    rows[s * width + j] = row
                    places[row] = s * width + j
            self.rows = torch.tensor(rows, dtype=torch.long, device=self.device)
            self.places = torch.tensor(places, dtype=torch.long, device=self.device)
            return
        key = tuple(active)
        if key != self._key:
            self._key, self.version = key, self.version + 1
        self.active = torch.tensor(active, dtype=torch.long, device=self.device)
        column = {s: i for i, s in enumerate(active)}
        mask = torch.zeros((len(slots), len(active), self.rank), dtype=self.dtype)
        for row, s in enumerate(slots):
            if s != BASE_SLOT:
                mask[row, column[s]] = 1
        self.mask = mask.view(len(slots), -1).to(self.device)

    def slot_major(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x's token rows gathered slot-major in the dtype to compute in, each token row's place among them).

        q/k/v (and gate/up) share one input, gathered once. The cache is keyed by the input tensor itself
        and holds it, so its memory cannot pass to another tensor meanwhile; projections' inputs are never
        modified in place (inference tensors carry no version counter to check that)."""
        assert self.rows is not None and self.places is not None
        x2 = x.reshape(-1, x.shape[-1])
        tokens = x2.shape[0] // self.places.shape[0]
        if tokens not in self._per_tokens:  # a prefill: each row's `tokens` positions
            t = torch.arange(tokens, device=self.device)
            self._per_tokens[tokens] = (
                (self.rows[:, None] * tokens + t).reshape(-1),
                (self.places[:, None] * tokens + t).reshape(-1),
            )
        rows, places = self._per_tokens[tokens]
        if self._gathered is None or self._gathered[0] is not x:
            self._gathered = (x, x2[rows].to(self.decode_dtype if tokens == 1 else self.dtype))
        return self._gathered[1], places

    def as_dtype(self, name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`t` in `dtype`: itself, or a copy in a scratch buffer shared by the layers."""
        if t.dtype == dtype:
            return t
        key = (name, t.shape[-1])  # all layers share one slot count and rank: one live shape per key
        buf = self._scratch.get(key)
        if buf is None or buf.shape != t.shape:
            buf = self._scratch[key] = torch.empty(t.shape, dtype=dtype, device=t.device)
        return buf.copy_(t)

    def mask_for(self, tokens: int) -> torch.Tensor:
        """The stacked row mask repeated for each of a row's `tokens` positions, built once a pass."""
        assert self.mask is not None
        if tokens not in self._per_tokens:
            self._per_tokens[tokens] = (self.mask.repeat_interleave(tokens, dim=0),)
        return self._per_tokens[tokens][0]

    def release(self) -> None:
        """End the pass: drop its gathered input and per-token indices (a prefill's can be large)."""
        self._per_tokens, self._gathered = {}, None

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
        self.A = torch.zeros(1, 0, shape[0], dtype=w.dtype, device=w.device)  # [slots, r, in]
        self.B = torch.zeros(1, 0, shape[1], dtype=w.dtype, device=w.device)  # [slots, r, out]: (B·scale)ᵀ
        self.present: set[int] = set()
        self._version = -1
        self._a = self._b = w.new_zeros(0)

    def reserve(self, slots: int, rank: int) -> None:
        """Grow the slot stack to hold `slots` slots of rank `rank` (new room is zeros)."""
        n, r = self.A.shape[0], self.A.shape[1]
        if slots <= n and rank <= r:
            return
        n2, r2 = max(n, slots), max(r, rank)
        a = self.A.new_zeros(n2, r2, self.A.shape[2])
        b = self.B.new_zeros(n2, r2, self.B.shape[2])
        a[:n, :r] = self.A
        b[:n, :r] = self.B
        self.A, self.B = a, b

    def put(self, slot: int, a: torch.Tensor, b: torch.Tensor) -> None:
        self.reserve(slot + 1, a.shape[0])
        self.A[slot].zero_()
        self.B[slot].zero_()
        self.A[slot, : a.shape[0]] = a.to(self.A)
        self.B[slot, : b.shape[1]] = b.T.to(self.B)
        self.present.add(slot)

    def clear(self, slot: int) -> None:
        if slot in self.present:
            self.A[slot].zero_()
            self.B[slot].zero_()
            self.present.discard(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        ctx = self.ctx
        if not self.present:
            return y
        x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        if ctx.single is not None:
            if ctx.single not in self.present:
                return y
            return torch.addmm(y2, x2 @ self.A[ctx.single].T, self.B[ctx.single]).view_as(y)
        if ctx.rows is not None:
            xs, places = ctx.slot_major(x)
            a, b = ctx.as_dtype("A", self.A, xs.dtype), ctx.as_dtype("B", self.B, xs.dtype)
            h = torch.bmm(xs.view(a.shape[0], -1, a.shape[2]), a.transpose(1, 2))
            # y is this call's fresh output: adding in place saves a temporary.
            y2.add_(torch.bmm(h, b).view(-1, b.shape[2])[places])
            return y
        if ctx.active is not None:
            # The distinct slots' factors side by side, rebuilt when that set changes.
            if self._version != ctx.version:
                self._a = self.A[ctx.active].reshape(-1, self.A.shape[2])
                self._b = self.B[ctx.active].reshape(-1, self.B.shape[2])
                self._version = ctx.version
            h = (x2 @ self._a.T) * ctx.mask_for(x2.shape[0] // ctx.mask.shape[0])  # type: ignore[union-attr]
            return torch.addmm(y2, h, self._b).view_as(y)
        return y


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
        self.ctx.slot_count = self.next_slot
        for layer in self.layers.values():  # every layer holds every slot at one rank, for the shared row layouts
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
