"""RMSNorm as one op each way while training, instead of HF's chain of ops.

transformers' Llama-family RMSNorm computes x.pow(2).mean → add → rsqrt → mul → mul (and as many ops again
backward), each a pass over a [tokens, hidden] tensor; on a CPU step with SmolLM2's 61 norms that is a few
percent of the time. torch's fused kernel (aten::_fused_rms_norm) computes the same y = w · x / sqrt(mean(x²) + eps)
in one pass and returns the reciprocal RMS; on CPU it has no fused backward (F.rms_norm under autograd falls back
to the chain), so the backward is written here for the frozen weight LoRA training has: with x̂ = x·rstd and
g' = g·w, dx = rstd·g' − x·rstd³·mean(g'·x), four passes. Swapped in fp32 only: in half precision HF rounds the
normalised input before the weight's multiply, which the fused kernel does not, and the bf16 CPUs' figures were
measured with HF's.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Norm classes whose forward is exactly w · x · rsqrt(mean(x²) + variance_epsilon) (not Gemma's 1 + w).
NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})


class _RMSNorm(torch.autograd.Function):
    """y = w · x · rstd over the last dimension, rstd = 1/sqrt(mean(x²) + eps); w frozen (no gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        y, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        gw = dy * weight
        # rstd³·mean(g'·x): vecdot reads both without a product buffer
        coef = torch.linalg.vecdot(gw, x).unsqueeze(-1).mul_(rstd.pow(3) / x.shape[-1])
        dx = gw.mul_(rstd).addcmul_(x, coef, value=-1.0)
        return dx, None, None


def _forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    fp32 = x.dtype == self.weight.dtype == torch.float32
    if not fp32 or self.weight.requires_grad:
        return type(self).forward(self, x)  # type: ignore[no-any-return]
    if not x.requires_grad:
        return F.rms_norm(x, self.weight.shape, self.weight, self.variance_epsilon)
    out: torch.Tensor = _RMSNorm.apply(x, self.weight, float(self.variance_epsilon))
    return out


def fuse(model: nn.Module) -> Callable[[], None]:
    """Give every RMSNorm of model (NORMS) the fused forward; returns the function that takes it away again."""
    norms = [m for m in model.modules() if type(m).__name__ in NORMS and hasattr(m, "variance_epsilon")]
    for m in norms:
        m.forward = types.MethodType(_forward, m)  # type: ignore[method-assign]

    def undo() -> None:
        for m in norms:
            m.__dict__.pop("forward", None)

    return undo
