"""The LM head and the weighted cross-entropy as one op: one [positions, vocab] buffer where the plain path has three.

The plain path projects every kept position onto the vocabulary and keeps those logits, takes log_softmax (a
second [positions, vocab] tensor), and backward builds a third for the gradient (zeroed, then scattered into)
before the head's input gradient: with SmolLM2's 49k vocabulary and a few hundred completion tokens ~200 MB and
five passes per micro-batch, a few percent of a CPU step. Here the logits of a chunk of positions (up to
CHUNK_BYTES) are reduced to the loss (max, exp, sum) and turned in place into their gradient (softmax minus
one-hot, times the weight), which goes straight through the head's weight to the hidden states' gradient, saved
for backward. The loss is the same sum of weight × cross-entropy; the argmax (for accuracy) comes from the same
max. Only for a frozen, bias-free head whose logits are nothing but hidden · Wᵀ (HEADS), so that it computes what
the model's own forward computes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

# Causal-LM classes whose forward is decoder → lm_head(hidden[:, keep]) and nothing more (no soft-capping, logit
# scale or bias): the fused op computes the same logits.
HEADS = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})
# Bytes of one chunk's fp32 logits. Large: on CPU the head's GEMM loses more to short chunks than the passes gain
# from cache (400 positions × 49k vocab, 2 threads: 365 ms in one chunk, 431 ms in 170-row chunks, 628 ms in
# 42-row ones, 467 ms the plain path); the cap bounds memory on long completions.
CHUNK_BYTES = 256 << 20


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(1, CHUNK_BYTES // (4 * vocab))
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 for bf16 states (as the plain path's .float())
        total = torch.zeros((), dtype=acc, device=hidden.device)
        argmax = torch.empty(n, dtype=torch.long, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            logits = (hidden[s:e] @ weight.t()).to(acc)  # [c, vocab]
            t, w = targets[s:e], weights[s:e].to(acc)
            rows = torch.arange(e - s, device=hidden.device)
            target_logit = logits[rows, t]
            top, argmax[s:e] = logits.max(-1)
            z = logits.sub_(top[:, None]).exp_().sum(-1)
            ce = z.log() + top - target_logit
            total += (ce * w).sum()
            if grad is not None:
                probs = logits.div_(z[:, None])  # softmax
                probs[rows, t] -= 1.0
                grad[s:e] = probs.mul_(w[:, None]).to(hidden.dtype) @ weight
        ctx.mark_non_differentiable(argmax)
        ctx.save_for_backward(grad)
        return total, argmax

    @staticmethod
    def backward(ctx: Any, d_total: torch.Tensor, _d_argmax: Any) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return (grad * d_total.to(grad.dtype) if grad is not None else None), None, None, None


def weighted_ce(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, hidden] states, the head's [vocab, hidden] weight, [n] targets and weights → (Σ weight × cross-entropy as
    an fp32 scalar with its gradient, [n] argmax of the logits)."""
    total, argmax = _HeadCrossEntropy.apply(hidden, weight, targets, weights)
    return total, argmax


def fusable_head(model: nn.Module) -> tuple[nn.Module, torch.Tensor] | None:
    """(the decoder, the head's weight) when model's logits are exactly decoder states · Wᵀ with W frozen, whole
    (not an FSDP shard) and no bias (HEADS); None otherwise, and the caller takes the model's own forward."""
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    if type(base).__name__ not in HEADS or not hasattr(base, "get_decoder"):
        return None
    head = base.get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    if isinstance(head.weight, DTensor):  # sharded (FSDP): only the root's forward gathers it
        return None
    return base.get_decoder(), head.weight
