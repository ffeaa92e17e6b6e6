"""The multi-adapter LoRA layer: every path (single adapter, masked GEMMs, per-row gather) equals W x + B A x."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.inference.lora import BASE_SLOT, LoadedAdapter, LoraContext, SlotTable


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 48, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # type: ignore[no-any-return]


def _adapter(seed: int, rank: int) -> LoadedAdapter:
    g = torch.Generator().manual_seed(seed)
    return LoadedAdapter({"proj": (torch.randn(rank, 64, generator=g), torch.randn(48, rank, generator=g))}, 0)


@pytest.mark.parametrize("adapters", [1, 3, 20])  # 20 × rank 8 > 2 × 64 columns: the per-row gather path
def test_every_row_gets_its_own_adapter(adapters: int) -> None:
    torch.manual_seed(0)
    model = _Tiny()
    base = model.proj.weight.detach().clone()
    ctx = LoraContext(torch.float32)
    table = SlotTable(model, ctx)
    loaded = [_adapter(i, rank=4 + 4 * (i % 2)) for i in range(adapters)]  # mixed ranks share padded stacks
    slots = [table.attach(a) for a in loaded]
    rows = [BASE_SLOT, *slots, *slots]
    x = torch.randn(len(rows), 3, 64)  # 3 positions per row, as in a prefill
    ctx.set(rows, torch.device("cpu"))
    with torch.inference_mode():
        y = model(x)
    for i, slot in enumerate(rows):
        expected = x[i] @ base.T
        if slot != BASE_SLOT:
            a, b = loaded[slots.index(slot)].modules["proj"]
            expected = expected + (x[i] @ a.T) @ b.T
        torch.testing.assert_close(y[i], expected, rtol=1e-4, atol=1e-4)


def test_detached_slot_is_reused_clean() -> None:
    model = _Tiny()
    ctx = LoraContext(torch.float32)
    table = SlotTable(model, ctx)
    first = table.attach(_adapter(1, rank=8))
    table.detach(first)
    second = table.attach(_adapter(2, rank=4))  # a smaller rank in the same slot: no stale columns left
    assert second == first
    x = torch.randn(2, 1, 64)
    ctx.set([second, second], torch.device("cpu"))
    a, b = _adapter(2, rank=4).modules["proj"]
    with torch.inference_mode():
        y = model(x)
    torch.testing.assert_close(y, x @ model.proj.base.weight.T + (x @ a.T) @ b.T, rtol=1e-4, atol=1e-4)
