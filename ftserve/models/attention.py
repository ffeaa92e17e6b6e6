"""The "ftserve_sdpa" attention: sdpa, except that a packed row given its sequences' boundaries attends per sequence.

A packed row (several examples in one row, position ids restarting at each) under plain sdpa gets a
block-diagonal [T, T] mask: the CPU kernel then computes all T² query-key pairs (no causal skipping once a mask
is given) and repeats the grouped key/value heads, although only the diagonal blocks' lower triangles count.
Given the boundaries (`cu_seq_lens_q`, the varlen kwarg transformers already defines for flash attention), this
attention runs sdpa once per sequence with `is_causal` and grouped-query heads as they are: Σ Lᵢ²/2 pairs
instead of T². Everything else (no boundaries, a batch of several rows, a 4-D mask such as DPO's) is plain
sdpa with plain sdpa's masks, so a model switched to this name computes what "sdpa" computes.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "ftserve_sdpa"
# Attention implementations that attend within a packed row's sequences only (flash attention's varlen kernel
# reads the boundaries from the position ids): the planner may pack long rows for them.
VARLEN = frozenset({NAME, "flash_attention_2", "flash_attention_3"})

# The boundaries tensor of the forward in progress and its sequences' lengths (every layer reads the same tensor).
_last: tuple[torch.Tensor | None, list[int]] = (None, [])


def _lengths(cu: torch.Tensor) -> list[int]:
    """The non-empty sequences' lengths of a packed row's boundaries, computed once per forward."""
    global _last
    if _last[0] is not cu:
        _last = (cu, [e - s for s, e in itertools.pairwise(int(v) for v in cu.tolist()) if e > s])
    return _last[1]


def packed_sdpa_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """[1, heads, T, dim] query/key/value of a packed row → [1, T, heads, dim], causal within each sequence."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or kwargs.get("position_bias") is not None or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    lengths = _lengths(cu)
    gqa = query.shape[1] != key.shape[1]
    # split, not slices: backward then gathers each tensor's gradient with one cat, where a slice's backward zeroes
    # a whole [1, heads, T, dim] buffer per sequence to copy its part in.
    parts = [
        F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa).transpose(1, 2)
        for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)), strict=True)
    ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return out.contiguous(), None


AttentionInterface.register(NAME, packed_sdpa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def packed_kwargs(position_ids: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The varlen kwargs of one packed row ([1, T] position ids restarting at 0 for each sequence) on device."""
    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist()
    bounds = [*starts, int(position_ids.shape[1])]
    cu = torch.tensor(bounds, dtype=torch.int32, device=device)
    longest = max(e - s for s, e in itertools.pairwise(bounds))
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
