"""peft's LoRA linears as one autograd op while training: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ with no elementwise passes.

peft's `Linear.forward` computes the base, then lora_B(lora_A(dropout(x))), multiplies by the scaling and adds:
two extra passes over the [tokens, out] output forward, two more backward, a gradient sum over [tokens, in],
and autograd's own orientation of the rank-r GEMMs (dy·B and dyᵀ·u, whose rank-wide output dimension MKL runs
at a fifth of the transposed product's speed on CPU). `fuse(model)` gives each adapted nn.Linear of the model a
forward that does the same arithmetic as one Function: the low-rank product accumulates into the base output
inside the GEMM (addmm), the backward computes dx = dy·W + s·(dy·B)·A the same way, and the rank-r GEMMs run
in their fast orientation. The parameters (and so state dicts, saved adapters, the optimizer) are peft's own,
untouched; any case the fused path does not cover (dropout while training, DoRA or another variant, several
adapters, a merged or disabled adapter, fan_in_fan_out, a non-Linear base) takes peft's forward unchanged.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from torch import nn


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        a: torch.Tensor,
        b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        y = F.linear(x2, weight, bias)
        ut = torch.mm(a, x2.t())  # [r, tokens]: A·xᵀ, the fast orientation of x·Aᵀ
        y.addmm_(ut.t(), b.t(), alpha=scaling)
        ctx.save_for_backward(x2, weight, a, b, ut)
        ctx.scaling = scaling
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, a, b, ut = ctx.saved_tensors
        s = ctx.scaling
        dy2 = dy.reshape(-1, dy.shape[-1])
        need_x, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        gt = torch.mm(b.t(), dy2.t()) if (need_x or need_a) else None  # [r, tokens]: (dy·B)ᵀ
        dx = dw = dbias = da = db = None
        if need_x:
            assert gt is not None
            dx2 = torch.mm(dy2, weight)
            dx2.addmm_(gt.t(), a, alpha=s)
            dx = dx2.view(*dy.shape[:-1], dx2.shape[-1])
        if need_a:
            assert gt is not None
            da = torch.mm(gt, x2).mul_(s)
        if need_b:
            db = torch.mm(ut, dy2).mul_(s).t().contiguous()  # (dyᵀ·u) computed as (uᵀ·dy)ᵀ: [out, r]
        if need_w:  # a frozen base never asks; kept so the op is correct for any caller
            dw = torch.mm(dy2.t(), x2)
        if need_bias and ctx.has_bias:
            dbias = dy2.sum(0)
        return dx, dw, dbias, da, db, None


def _fused_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's Linear.forward, as one fused op whenever it is plain LoRA on an nn.Linear."""
    names = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(names) != 1:
        return LoraLinear.forward(self, x, *args, **kwargs)
    name = names[0]
    base = self.base_layer
    if name not in self.lora_A or name in self.lora_variant or type(base) is not nn.Linear or self.fan_in_fan_out:
        return LoraLinear.forward(self, x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    if self.training and not isinstance(dropout, nn.Identity) and getattr(dropout, "p", 1.0) > 0:
        return LoraLinear.forward(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    a, b = lora_a.weight, lora_b.weight
    if lora_b.bias is not None or not (x.dtype == base.weight.dtype == a.dtype == b.dtype):
        return LoraLinear.forward(self, x, *args, **kwargs)
    out: torch.Tensor = _LoraLinear.apply(x, base.weight, base.bias, a, b, float(self.scaling[name]))
    return out


def fuse(model: nn.Module) -> Callable[[], None]:
    """Give every peft LoRA Linear of model the fused forward; returns the function that takes it away again."""
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for m in layers:
        m.forward = types.MethodType(_fused_forward, m)  # type: ignore[method-assign]

    def undo() -> None:
        for m in layers:
            m.__dict__.pop("forward", None)

    return undo
