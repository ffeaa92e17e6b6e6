"""The engine's attention: torch's SDPA as transformers calls it, except a half-precision decode step on CPU (one
query position per row), which runs in fp32: torch's CPU kernel for that shape is 4-6x slower in bf16 than the
fp32 one plus the casts (SmolLM2, 16 rows, 68 keys: 1.8 ms against 0.45 ms a layer on one thread), and a decode
step of a small model spent a fifth of its time there."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "ftserve_engine_sdpa"
# What the engine replaces: SDPA, and training's SDPA with packed rows (models/attention; a rollouts view
# copies the policy's config), whose packed path an engine pass never takes (it passes no sequence bounds).
_REPLACED = frozenset({"sdpa", "ftserve_sdpa"})
_HALF = (torch.bfloat16, torch.float16)


def engine_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' sdpa_attention_forward, in fp32 for a half-precision CPU decode step."""
    if query.device.type != "cpu" or query.shape[2] != 1 or query.dtype not in _HALF:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    mask = attention_mask if attention_mask is None or attention_mask.dtype == torch.bool else attention_mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask, **kwargs)
    return out.to(query.dtype), weights


AttentionInterface.register(NAME, engine_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA takes


def use_engine_attention(model: PreTrainedModel) -> None:
    """Switch a model loaded with SDPA to the engine's; any other attention (eager, flash) is left as it is."""
    if model.config._attn_implementation in _REPLACED:
        model.set_attn_implementation(NAME)
