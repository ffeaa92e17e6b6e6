"""The multi-adapter LoRA layer: every layout (one slot, slot-major batched matmuls, stacked with a row mask)
equals W x + B A x for every row, whatever the passes before it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftserve.engine.adapter_files import LoadedAdapter
from ftserve.engine.lora import BASE_SLOT, LoraContext, MultiLoraLinear, SlotTable


class _Tiny(nn.Module):
    """Two layers reading one input (as q/k/v do), summed; `flatten` feeds them [batch·sequence, hidden]
    as OPT's MLP does."""

    def __init__(self, flatten: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 48, bias=False)
        self.gate = nn.Linear(64, 48, bias=True)
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1]) if self.flatten else x
        return (self.proj(h) + self.gate(h)).view(*x.shape[:-1], -1)


def _adapter(seed: int, rank: int) -> LoadedAdapter:
    """Odd seeds leave `gate` alone: adapters need not wrap the same layers."""
    g = torch.Generator().manual_seed(seed)
    names = ["proj"] if seed % 2 else ["proj", "gate"]
    modules = {n: (torch.randn(rank, 64, generator=g), torch.randn(48, rank, generator=g)) for n in names}
    return LoadedAdapter(modules, 0)


def _layout(ctx: LoraContext) -> str:
    if ctx.single is not None:
        return "single"
    return "slot-major" if ctx.rows is not None else "stacked" if ctx.active is not None else "base"


def _base(layer: nn.Module) -> nn.Linear:
    inner = layer.base if isinstance(layer, MultiLoraLinear) else layer
    assert isinstance(inner, nn.Linear)
    return inner


def _check(model: _Tiny, loaded: dict[int, LoadedAdapter], rows: list[int], tokens: int = 3) -> str:
    """Run one pass over `rows` (each `tokens` positions, as in a prefill); returns the layout it used."""
    proj, gate = _base(model.proj), _base(model.gate)
    x = torch.randn(len(rows), tokens, 64).to(proj.weight.dtype)
    assert isinstance(model.proj, MultiLoraLinear)
    ctx = model.proj.ctx
    ctx.set(rows)
    with torch.inference_mode():
        y = model(x)
    layout = _layout(ctx)
    ctx.release()
    exact = proj.weight.dtype == torch.float32  # bf16: one rounding of each product and of the sum
    for i, slot in enumerate(rows):
        xi = x[i].float()
        w = proj.weight.detach().float() + gate.weight.detach().float()
        expected = xi @ w.T + gate.bias.detach().float()
        if slot != BASE_SLOT:
            for a, b in loaded[slot].modules.values():
                a, b = a.to(proj.weight.dtype).float(), b.to(proj.weight.dtype).float()
                expected = expected + (xi @ a.T) @ b.T
        tol = 1e-4 if exact else 2e-2 * float(expected.abs().max())
        torch.testing.assert_close(y[i].float(), expected, rtol=0, atol=tol)
    return layout


def _table(
    adapters: int, dtype: torch.dtype = torch.float32, flatten: bool = False, free_one: bool = False
) -> tuple[_Tiny, dict[int, LoadedAdapter]]:
    """A model with `adapters` attached (mixed ranks share padded stacks); `free_one` detaches the last."""
    torch.manual_seed(0)
    model = _Tiny(flatten).to(dtype)
    table = SlotTable(model, LoraContext(dtype, torch.device("cpu")))
    loaded = {table.attach(a): a for a in (_adapter(i, rank=4 + 4 * (i % 2)) for i in range(adapters))}
    if free_one:
        slot = max(loaded)
        table.detach(slot)
        del loaded[slot]
    return model, loaded


def _rows(slots: list[int], spread: str) -> list[int]:
    if spread == "one":
        return [slots[0]] * 3
    if spread == "even":  # every slot (the base's too) holds about as many rows
        return [BASE_SLOT, *slots, *slots, BASE_SLOT]
    if spread == "uneven":  # slot-major with padding: one slot has 3 rows, most 2, the base 1, a free slot 0
        return [BASE_SLOT, *slots, *slots, slots[0]]
    return [slots[0]] * 30 + slots[1:] + [BASE_SLOT]  # skewed: slot-major would be mostly padding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: stacks kept in bf16
@pytest.mark.parametrize(
    ("adapters", "spread", "layout"),
    [
        (1, "one", "single"),
        (3, "even", "stacked"),  # few adapters: the stacked GEMMs are the cheaper layout
        (20, "even", "slot-major"),
        (20, "uneven", "slot-major"),
        (20, "skewed", "stacked"),
    ],
)
@pytest.mark.parametrize("flatten", [False, True], ids=["3d", "flattened"])
def test_every_row_gets_its_own_adapter(
    adapters: int, spread: str, layout: str, dtype: torch.dtype, flatten: bool
) -> None:
    model, loaded = _table(adapters, dtype, flatten, free_one=spread == "uneven")
    rows = _rows(list(loaded), spread)
    assert _check(model, loaded, rows) == layout  # a prefill (bf16 slot-major computes in bf16)
    assert _check(model, loaded, rows, tokens=1) == layout  # a decode step (bf16 slot-major: in fp32)


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
    table = SlotTable(model, LoraContext(torch.float32, torch.device("cpu")))
    first = table.attach(_adapter(2, rank=8))
    table.detach(first)
    second = table.attach(_adapter(4, rank=4))  # a smaller rank in the same slot: no stale columns left
    assert second == first
    assert _check(model, {second: _adapter(4, rank=4)}, [second, second]) == "single"
