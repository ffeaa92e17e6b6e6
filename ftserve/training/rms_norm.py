"""RMSNorm as torch's fused kernel while training: one pass forward and backward instead of HF's chain of ops.

transformers' Llama-family RMSNorm computes x.pow(2).mean → add → rsqrt → mul → mul (and as many ops again
backward), each a pass over a [tokens, hidden] tensor; on a CPU step with SmolLM2's 61 norms that is a few
percent of the time. torch.nn.functional.rms_norm computes the same y = w · x / sqrt(mean(x²) + eps) with a fused
kernel both ways. Swapped in fp32 only: in half precision HF rounds the normalised input before the weight's
multiply, which the fused kernel does not, and the bf16 CPUs' figures were measured with HF's.
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


def _forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or self.weight.dtype != torch.float32:
        return type(self).forward(self, x)  # type: ignore[no-any-return]
    return F.rms_norm(x, self.weight.shape, self.weight, self.variance_epsilon)


def fuse(model: nn.Module) -> Callable[[], None]:
    """Give every RMSNorm of model (NORMS) the fused forward; returns the function that takes it away again."""
    norms = [m for m in model.modules() if type(m).__name__ in NORMS and hasattr(m, "variance_epsilon")]
    for m in norms:
        m.forward = types.MethodType(_forward, m)  # type: ignore[method-assign]

    def undo() -> None:
        for m in norms:
            m.__dict__.pop("forward", None)

    return undo
