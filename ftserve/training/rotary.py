"""Rotary position embedding as one autograd op while training, in place of HF's chain of elementwise ops.

HF's `apply_rotary_pos_emb` computes q·cos + rotate_half(q)·sin, where rotate_half slices q in two, negates one
half and concatenates: six passes over q (and k) forward, and backward as many again plus a zero-filled buffer
per slice. The same rotation as one op: y = x·cos, then y₁ −= x₂·sin₁ and y₂ += x₁·sin₂ in place (three passes);
its backward is the transposed rotation, three passes too, and it saves only cos and sin. Swapped into the
architectures' modules while a trainer is open (the module-level function their attention calls), for fp32
inputs; anything else calls HF's function.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

import torch

# transformers modules whose attention calls their own module-level apply_rotary_pos_emb(q, k, cos, sin) with
# HF's rotate_half convention.
MODULES = (
    "transformers.models.llama.modeling_llama",
    "transformers.models.mistral.modeling_mistral",
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.qwen3.modeling_qwen3",
)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """x·cos + sign·R(x)·sin with R(x) = [-x₂, x₁] (sign 1: the rotation; -1: its transpose, for the backward,
    with sin's halves swapped by the caller)."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-sign)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:], value=sign)
    return out


class _Rotary(torch.autograd.Function):
    """(q, k, cos, sin) → q and k rotated; cos and sin already broadcastable to q and k."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(cos, sin)
        return _rotate(q, cos, sin, 1.0), _rotate(k, cos, sin, 1.0)

    @staticmethod
    def backward(ctx: Any, dq: torch.Tensor, dk: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        # The transpose of x ↦ x·c + R(x)·s is d ↦ d·c + Rᵀ(d·s): dx₁ = d₁c₁ + d₂s₂, dx₂ = d₂c₂ − d₁s₁.
        swapped = sin.roll(sin.shape[-1] // 2, dims=-1)
        dq_in = _rotate(dq, cos, swapped, -1.0) if ctx.needs_input_grad[0] else None
        dk_in = _rotate(dk, cos, swapped, -1.0) if ctx.needs_input_grad[1] else None
        return dq_in, dk_in, None, None


def _fused(original: Callable[..., Any]) -> Callable[..., Any]:
    def apply_rotary_pos_emb(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
    ) -> Any:
        fp32 = q.dtype == k.dtype == cos.dtype == sin.dtype == torch.float32
        if not fp32 or cos.requires_grad or sin.requires_grad or q.shape[-1] % 2:
            return original(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
        return _Rotary.apply(q, k, cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim))

    return apply_rotary_pos_emb


_lock = threading.Lock()
_users = 0
_originals: dict[str, Callable[..., Any]] = {}


def fuse() -> Callable[[], None]:
    """Swap the fused rotary embedding into MODULES (process-wide, counted: the last trainer to close swaps HF's
    back); returns the function that releases it."""
    global _users
    with _lock:
        if _users == 0:
            for name in MODULES:
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    continue
                original = getattr(module, "apply_rotary_pos_emb", None)
                if original is not None:
                    _originals[name] = original
                    module.apply_rotary_pos_emb = _fused(original)  # type: ignore[attr-defined]
        _users += 1
    released = False

    def undo() -> None:
        global _users
        nonlocal released
        with _lock:
            if released:
                return
            released = True
            _users -= 1
            if _users == 0:
                for name, original in _originals.items():
                    importlib.import_module(name).apply_rotary_pos_emb = original  # type: ignore[attr-defined]
                _originals.clear()

    return undo
