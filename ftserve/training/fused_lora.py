"""peft's LoRA linears as one autograd op while training: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ with no elementwise passes.

peft's `Linear.forward` computes the base, then lora_B(lora_A(dropout(x))), multiplies by the scaling and adds:
two extra passes over the [tokens, out] output forward, two more backward, a gradient sum over [tokens, in],
and autograd's own orientation of the rank-r GEMMs (dy·B and dyᵀ·u, whose rank-wide output dimension MKL runs
at a fifth of the transposed product's speed on CPU). `fuse(model)` gives each adapted nn.Linear of the model a
forward that does the same arithmetic as one Function (`_LoraGroup`, here with one linear): the low-rank
product accumulates into the base output inside the GEMM (addmm), the backward computes dx = dy·W + s·(dy·B)·A
the same way, and the rank-r GEMMs run in their fast orientation. The parameters (and so state dicts, saved
adapters, the optimizer) are peft's own, untouched; any case the fused path does not cover (dropout while
training, DoRA or another variant, several adapters, a merged or disabled adapter, fan_in_fan_out, a non-Linear
base) takes peft's forward unchanged.

Sibling projections that read the same input (a block's q/k/v, an MLP's gate/up) run as one call of that op:
their frozen base weights become row ranges of one matrix, so the base is one GEMM as wide as all of them, and
their A factors are stacked, so the input is read once for all rank-r products forward and once for A's
gradients backward. Whichever sibling the model calls first computes all of them; the others take their
columns, as long as they are called on that same input tensor (anything else: the single op). In fp32 only.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from torch import nn


class _LoraGroup(torch.autograd.Function):
    """LoRA linears on one input: y = x·Wᵀ + s·(x·Aᵀ)·B_blockᵀ, with W and A the linears' stacked rows and each
    linear's B acting on its own r columns of x·Aᵀ and its own output columns. One linear is the plain fused op."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        a: torch.Tensor,
        scaling: float,
        *bs: torch.Tensor,
    ) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        y = F.linear(x2, weight, bias)
        # [siblings·r, tokens]: A·xᵀ, the fast orientation of x·Aᵀ, the input read once for every sibling's A
        ut = torch.mm(a, x2.t())
        cols, rows = _segments(bs)
        for b, (c0, c1), (r0, r1) in zip(bs, cols, rows, strict=True):
            y[:, c0:c1].addmm_(ut[r0:r1].t(), b.t(), alpha=scaling)
        ctx.save_for_backward(x2, weight, a, ut, *bs)
        ctx.scaling = scaling
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, a, ut, *bs = ctx.saved_tensors
        s = ctx.scaling
        dy2 = dy.reshape(-1, dy.shape[-1])
        cols, rows = _segments(bs)
        need_x, need_w, need_bias, need_a = ctx.needs_input_grad[:4]
        need_b = ctx.needs_input_grad[5:]
        dx = dw = dbias = da = None
        if need_x or need_a:
            gt = torch.empty_like(ut)  # [siblings·r, tokens]: each sibling's (dy·B)ᵀ
            for b, (c0, c1), (r0, r1) in zip(bs, cols, rows, strict=True):
                torch.mm(b.t(), dy2[:, c0:c1].t(), out=gt[r0:r1])
            if need_x:
                dx2 = torch.mm(dy2, weight)  # one GEMM over every sibling's output columns
                dx2.addmm_(gt.t(), a, alpha=s)
                dx = dx2.view(*dy.shape[:-1], dx2.shape[-1])
            if need_a:
                da = torch.mm(gt, x2).mul_(s)
        dbs = [  # (dyᵀ·u) computed as (uᵀ·dy)ᵀ: [out, r]
            torch.mm(ut[r0:r1], dy2[:, c0:c1]).mul_(s).t().contiguous() if need else None
            for need, (c0, c1), (r0, r1) in zip(need_b, cols, rows, strict=True)
        ]
        if need_w:  # a frozen base never asks; kept so the op is correct for any caller
            dw = torch.mm(dy2.t(), x2)
        if need_bias and ctx.has_bias:
            dbias = dy2.sum(0)
        return dx, dw, dbias, da, None, *dbs


def _segments(bs: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Each sibling's output columns and its rows of the stacked A, from its B ([out, r])."""
    cols, rows, c, r = [], [], 0, 0
    for b in bs:
        cols.append((c, c + b.shape[0]))
        rows.append((r, r + b.shape[1]))
        c, r = c + b.shape[0], r + b.shape[1]
    return cols, rows


def _plain_lora(self: LoraLinear, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The active adapter's name when this call is plain LoRA on an nn.Linear the fused ops cover, else None."""
    names = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(names) != 1:
        return None
    name: str = names[0]
    base = self.base_layer
    if name not in self.lora_A or name in self.lora_variant or type(base) is not nn.Linear or self.fan_in_fan_out:
        return None
    dropout = self.lora_dropout[name]
    if self.training and not isinstance(dropout, nn.Identity) and getattr(dropout, "p", 1.0) > 0:
        return None
    a, b = self.lora_A[name].weight, self.lora_B[name]
    if b.bias is not None or not (x.dtype == base.weight.dtype == a.dtype == b.weight.dtype):
        return None
    return name


def _fused_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's Linear.forward, as one fused op whenever it is plain LoRA on an nn.Linear."""
    name = _plain_lora(self, x, args, kwargs)
    if name is None:
        return LoraLinear.forward(self, x, *args, **kwargs)
    base = self.base_layer
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    out: torch.Tensor = _LoraGroup.apply(x, base.weight, base.bias, a, float(self.scaling[name]), b)
    return out


# Sibling projections that read the same input in the architectures ftserve trains (Llama, Qwen, Mistral, SmolLM…).
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _Group:
    """Sibling LoRA linears whose base weights are row ranges of one matrix, and the outputs of the last call
    that computed them all, waiting for the siblings not yet called on that input."""

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers  # peft LoraLinear modules (typed Any: their submodules are untyped to mypy)
        weights = [m.base_layer.weight for m in layers]
        self.weight = torch.cat([w.detach() for w in weights])
        at = 0
        for w in weights:  # frozen: the same values, now views into the stacked matrix (no second copy)
            w.data = self.weight[at : at + w.shape[0]]
            at += w.shape[0]
        biases = [m.base_layer.bias for m in layers]
        self.bias = torch.cat([bias.detach() for bias in biases]) if all(bb is not None for bb in biases) else None
        self.uniform_bias = self.bias is not None or all(bb is None for bb in biases)
        self.input: torch.Tensor | None = None
        self.outputs: dict[int, torch.Tensor] = {}

    def forward(self, layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.input is x and id(layer) in self.outputs:
            out = self.outputs.pop(id(layer))
            if not self.outputs:
                self.input = None
            return out
        self.input, self.outputs = None, {}
        y = self.stacked(x, *args, **kwargs)
        if y is None:
            return _fused_forward(layer, x, *args, **kwargs)
        parts = y.split([m.base_layer.weight.shape[0] for m in self.layers], dim=-1)
        self.outputs = {id(m): part for m, part in zip(self.layers, parts, strict=True)}
        self.input = x
        return self.forward(layer, x)

    def stacked(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | None:
        """Every sibling's output on x side by side ([..., Σ out]) as one grouped op, or None where the group
        does not apply (then each sibling computes its own)."""
        names = [_plain_lora(m, x, args, kwargs) for m in self.layers]
        scalings = {float(m.scaling[n]) for m, n in zip(self.layers, names, strict=True) if n is not None}
        frozen = not any(m.base_layer.weight.requires_grad for m in self.layers)
        # fp32 only: the bf16 CPUs' figures (docs/performance.md) were measured with the single op, and grouping
        # was measured only where bf16 is not the compute dtype (CPUs without bf16 kernels).
        if x.dtype != torch.float32 or None in names or len(scalings) != 1 or not self.uniform_bias or not frozen:
            return None
        a = torch.cat([m.lora_A[n].weight for m, n in zip(self.layers, names, strict=True)])
        bs = [m.lora_B[n].weight for m, n in zip(self.layers, names, strict=True)]
        y: torch.Tensor = _LoraGroup.apply(x, self.weight, self.bias, a, scalings.pop(), *bs)
        return y

    def undo(self) -> None:
        self.input, self.outputs = None, {}
        for m in self.layers:  # each base weight its own storage again
            m.base_layer.weight.data = m.base_layer.weight.data.clone()


# The attribute a grouped sibling holds its group under while fused (training/swiglu reads the stacked output).
GROUP = "_ftserve_lora_group"


def group_of(layer: nn.Module) -> _Group | None:
    """The sibling group a fused LoRA linear belongs to, if any."""
    group = layer.__dict__.get(GROUP)
    return group if isinstance(group, _Group) else None


def _groups(model: nn.Module) -> list[_Group]:
    """Every set of sibling LoRA linears (SIBLINGS) under one parent with the same input width and dtype."""
    found = []
    for parent in model.modules():
        for names in SIBLINGS:
            layers = [getattr(parent, n, None) for n in names]
            if not all(isinstance(m, LoraLinear) and type(m.base_layer) is nn.Linear for m in layers):
                continue
            weights = [m.base_layer.weight for m in layers]  # type: ignore[union-attr]
            if len({(w.shape[1], w.dtype, w.device) for w in weights}) == 1:
                found.append(_Group(layers))  # type: ignore[arg-type]
    return found


def fuse(model: nn.Module) -> Callable[[], None]:
    """Give every peft LoRA Linear of model the fused forward (sibling projections one grouped op); returns the
    function that takes it away again."""
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for m in layers:
        m.forward = types.MethodType(_fused_forward, m)  # type: ignore[method-assign]
    groups = _groups(model)
    for group in groups:
        for m in group.layers:
            m.forward = types.MethodType(lambda self, x, *a, _g=group, **k: _g.forward(self, x, *a, **k), m)  # type: ignore[method-assign]
            m.__dict__[GROUP] = group

    def undo() -> None:
        for group in groups:
            group.undo()
        for m in layers:
            m.__dict__.pop("forward", None)
            m.__dict__.pop(GROUP, None)

    return undo
