"""The engine's attention: a half-precision CPU decode step computed in fp32 gives SDPA's own result (to bf16's
precision), every other shape is SDPA's call unchanged, and the engine switches its models to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ftserve.engine.attention import NAME, engine_sdpa, use_engine_attention
from ftserve.models.attention import NAME as TRAINING_SDPA


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 3


def _qkv(q_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 9, q_len, 16, generator=g).to(dtype)
    k, v = (torch.randn(4, 3, 12, 16, generator=g).to(dtype) for _ in range(2))
    mask = torch.ones(4, 1, q_len, 12, dtype=torch.bool)
    mask[0, :, :, :5] = False  # a left-padded row
    return q, k, v, mask


def test_half_precision_decode_runs_in_fp32() -> None:
    q, k, v, mask = _qkv(1, torch.bfloat16)
    out, _ = engine_sdpa(_Module(), q, k, v, mask, scaling=0.25)
    assert out.dtype == torch.bfloat16 and out.shape == (4, 1, 9, 16)
    expected = F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask, scale=0.25, enable_gqa=True
    ).transpose(1, 2)
    assert torch.equal(out, expected.to(torch.bfloat16))  # the fp32 result, rounded once
    # bf16's own kernel rounds along the way: close, not equal
    native = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25, enable_gqa=True).transpose(1, 2)
    assert torch.allclose(out.float(), native.float(), atol=3e-2)


@pytest.mark.parametrize(("q_len", "dtype"), [(5, torch.bfloat16), (1, torch.float32)])
def test_other_shapes_are_sdpas_own(q_len: int, dtype: torch.dtype) -> None:
    q, k, v, mask = _qkv(q_len, dtype)
    out, _ = engine_sdpa(_Module(), q, k, v, mask, scaling=0.25)
    expected, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=0.25)
    assert out.dtype == dtype and torch.equal(out, expected)


def test_engine_models_use_it(bases_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(bases_dir / "ftserve-tiny", attn_implementation="sdpa")
    ids = torch.tensor([[5, 6, 7, 8]])
    before = model.generate(ids, max_new_tokens=4, do_sample=False)
    use_engine_attention(model)
    assert model.config._attn_implementation == NAME
    assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), before)
    packed = AutoModelForCausalLM.from_pretrained(bases_dir / "ftserve-tiny", attn_implementation=TRAINING_SDPA)
    use_engine_attention(packed)  # a rollouts view of a policy trained with packed-row SDPA
    assert packed.config._attn_implementation == NAME
    eager = AutoModelForCausalLM.from_pretrained(bases_dir / "ftserve-tiny", attn_implementation="eager")
    use_engine_attention(eager)
    assert eager.config._attn_implementation == "eager"  # only SDPA is swapped
