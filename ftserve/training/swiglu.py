"""The Llama-family MLP while training: down(silu(gate(x)) · up(x)) with gate and up one grouped LoRA op and the
gated product one autograd op whose backward writes both halves' gradients into one buffer.

HF's MLP computes gate and up as two outputs; with training/fused_lora's grouping they are column ranges of one
[tokens, 2·intermediate] output, whose backward then gathers the two gradients with a cat: one more pass over
the widest activation of the block, and autograd's silu → mul chain allocates a buffer per op. Here the gated
product reads the stacked output directly and its backward writes d(gate) and d(up) straight into the stacked
gradient. The same arithmetic: silu(g)·u forward; du = dh·silu(g), dg = silu'(g)·(dh·u) backward. fp32 only,
like the grouping it builds on.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftserve.training import fused_lora

# MLP classes whose forward is exactly down_proj(act_fn(gate_proj(x)) * up_proj(x)).
MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
# Activation modules that are F.silu (transformers' ACT2FN["silu"] is its SiLUActivation, or torch's nn.SiLU).
SILUS = frozenset({"SiLU", "SiLUActivation"})


class _SwiGLU(torch.autograd.Function):
    """[..., 2·I] gate‖up → [..., I] silu(gate)·up."""

    @staticmethod
    def forward(ctx: Any, gu: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g, u = gu.chunk(2, dim=-1)
        sg = F.silu(g)
        ctx.save_for_backward(gu, sg)
        return sg * u

    @staticmethod
    def backward(ctx: Any, dh: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        gu, sg = ctx.saved_tensors
        g, u = gu.chunk(2, dim=-1)
        dgu = torch.empty_like(gu, memory_format=torch.contiguous_format)
        dg, du = dgu.chunk(2, dim=-1)
        torch.mul(dh, sg, out=du)
        torch.mul(dh, u, out=dg)
        torch.ops.aten.silu_backward.grad_input(dg, g, grad_input=dg)  # elementwise: in place is safe
        return dgu


def swiglu(gu: torch.Tensor) -> torch.Tensor:
    """silu(gate)·up of the stacked [..., 2·I] gate‖up output, as one autograd op."""
    out: torch.Tensor = _SwiGLU.apply(gu)
    return out


def _forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    group = fused_lora.group_of(self.gate_proj)
    gu = group.stacked(x) if group is not None else None
    if gu is None:
        return type(self).forward(self, x)  # type: ignore[no-any-return]
    out: torch.Tensor = self.down_proj(swiglu(gu))
    return out


def _fusable(mlp: nn.Module) -> bool:
    """An MLP of MLPS with a SiLU activation whose gate and up are one fused LoRA group, in that order."""
    if type(mlp).__name__ not in MLPS or type(getattr(mlp, "act_fn", None)).__name__ not in SILUS:
        return False
    gate, up = getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)
    group = fused_lora.group_of(gate) if isinstance(gate, nn.Module) else None
    if group is None or group.layers != [gate, up]:
        return False
    return bool(group.layers[0].base_layer.weight.shape == group.layers[1].base_layer.weight.shape)


def fuse(model: nn.Module) -> Callable[[], None]:
    """Give every fusable MLP of model (after fused_lora.fuse) the fused forward; returns the function that takes
    it away again."""
    mlps = [m for m in model.modules() if _fusable(m)]
    for m in mlps:
        m.forward = types.MethodType(_forward, m)  # type: ignore[method-assign]

    def undo() -> None:
        for m in mlps:
            m.__dict__.pop("forward", None)

    return undo
