"""The multi-adapter LoRA layer: every layout (one slot, slot-major batched matmuls, stacked with a row mask)
equals W x + B A x for every row, whatever the passes before it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.inference.lora import BASE_SLOT, LoadedAdapter, LoraContext, SlotTable


class _Tiny(nn.Module):
    def __init__(self, flatten: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 48, bias=False)
        self.flatten = flatten  # as OPT's MLP does: the layer sees [batch·sequence, hidden]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten:
            return self.proj(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)  # type: ignore[no-any-return]
        return self.proj(x)  # type: ignore[no-any-return]


def _adapter(seed: int, rank: int) -> LoadedAdapter:
    g = torch.Generator().manual_seed(seed)
    return LoadedAdapter({"proj": (torch.randn(rank, 64, generator=g), torch.randn(48, rank, generator=g))}, 0)


def _layout(ctx: LoraContext) -> str:
    if ctx.single is not None:
        return "single"
    return "slot-major" if ctx.rows is not None else "stacked" if ctx.active is not None else "base"


def _check(model: _Tiny, loaded: dict[int, LoadedAdapter], rows: list[int], tokens: int = 3) -> str:
    """Run one pass over `rows` (each `tokens` positions, as in a prefill); returns the layout it used."""
    base = model.proj.base.weight.detach()  # type: ignore[union-attr]
    x = torch.randn(len(rows), tokens, 64).to(base.dtype)
    ctx = model.proj.ctx  # type: ignore[union-attr]
    ctx.set(rows, torch.device("cpu"))
    with torch.inference_mode():
        y = model(x)
    exact = base.dtype == torch.float32  # bf16: one rounding of each product and of the sum
    for i, slot in enumerate(rows):
        xi = x[i].float()
        expected = xi @ base.float().T
        if slot != BASE_SLOT:
            a, b = (t.to(base.dtype).float() for t in loaded[slot].modules["proj"])
            expected = expected + (xi @ a.T) @ b.T
        tol = 1e-4 if exact else 2e-2 * float(expected.abs().max())
        torch.testing.assert_close(y[i].float(), expected, rtol=0, atol=tol)
    return _layout(ctx)


def _table(
    adapters: int, dtype: torch.dtype = torch.float32, flatten: bool = False
) -> tuple[_Tiny, dict[int, LoadedAdapter]]:
    torch.manual_seed(0)
    model = _Tiny(flatten).to(dtype)
    table = SlotTable(model, LoraContext(dtype, torch.device("cpu")))
    loaded = [_adapter(i, rank=4 + 4 * (i % 2)) for i in range(adapters)]  # mixed ranks share padded stacks
    return model, {table.attach(a): a for a in loaded}


def _rows(slots: list[int], spread: str) -> list[int]:
    if spread == "one":
        return [slots[0]] * 3
    if spread == "even":  # every slot (the base's too) holds about as many rows
        return [BASE_SLOT, *slots, *slots, BASE_SLOT]
    return [slots[0]] * 30 + slots[1:] + [BASE_SLOT]  # skewed: slot-major would be mostly padding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: stacks kept in bf16, computed in fp32
@pytest.mark.parametrize(
    ("adapters", "spread", "layout"),
    [
        (1, "one", "single"),
        (3, "even", "stacked"),  # few adapters: the stacked GEMMs are the cheaper layout
        (20, "even", "slot-major"),
        (20, "skewed", "stacked"),
    ],
)
@pytest.mark.parametrize("flatten", [False, True], ids=["3d", "flattened"])
def test_every_row_gets_its_own_adapter(
    adapters: int, spread: str, layout: str, dtype: torch.dtype, flatten: bool
) -> None:
    model, loaded = _table(adapters, dtype, flatten)
    rows = _rows(list(loaded), spread)
    assert _check(model, loaded, rows) == layout
    assert _check(model, loaded, rows, tokens=1) == layout  # a decode step


def test_layouts_follow_each_other_without_stale_state() -> None:
    """Each pass sets its own layout: a batch seen before still gets its adapters after other layouts ran."""
    model, loaded = _table(20)
    slots = list(loaded)
    skewed = _rows(slots, "skewed")
    sequence = (skewed, [BASE_SLOT] * 4, skewed, _rows(slots, "one"), skewed, _rows(slots, "even"), skewed)
    seen = [_check(model, loaded, rows) for rows in sequence]
    assert seen == ["stacked", "base", "stacked", "single", "stacked", "slot-major", "stacked"]


def test_detached_slot_is_reused_clean() -> None:
    model = _Tiny()
    ctx = LoraContext(torch.float32, torch.device("cpu"))
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
