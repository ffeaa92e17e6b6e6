"""The decoder block's fused ops while training (training/rms_norm, training/swiglu, training/rotary): each is its
own gradient, the whole set gives the model's loss and gradients, and undoing it gives the model back as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers.models.llama import modeling_llama

from ftserve.training import fused_lora, rms_norm, rotary, swiglu
from ftserve.training.rms_norm import _RMSNorm
from ftserve.training.rotary import _Rotary
from ftserve.training.swiglu import _SwiGLU
from ftserve.training.trainer import LoraTrainer, loss_sums
from tests.unit.test_fused_lora import _loss_and_grads, _model


def test_rms_norm_is_its_own_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: _RMSNorm.apply(x, weight, 1e-5), (x,))
    reference = weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(_RMSNorm.apply(x, weight, 1e-5), reference)


def test_swiglu_is_its_own_gradient() -> None:
    torch.manual_seed(0)
    gu = torch.randn(2, 5, 2 * 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SwiGLU.apply, (gu,))
    gate, up = gu.chunk(2, dim=-1)
    torch.testing.assert_close(_SwiGLU.apply(gu), torch.nn.functional.silu(gate) * up)


def test_rotary_is_its_own_gradient_and_hf_rotation() -> None:
    """Any cos and sin (HF's halves are equal; these are not, so a swapped half would show), q and k as HF hands
    them (transposed views), grouped-query heads."""
    torch.manual_seed(0)
    q = torch.randn(1, 5, 4, 6, dtype=torch.float64).transpose(1, 2).requires_grad_()
    k = torch.randn(1, 5, 2, 6, dtype=torch.float64).transpose(1, 2).requires_grad_()
    cos, sin = torch.randn(1, 1, 5, 6, dtype=torch.float64), torch.randn(1, 1, 5, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k: _Rotary.apply(q, k, cos, sin), (q, k))
    expected = modeling_llama.apply_rotary_pos_emb(q, k, cos.squeeze(1), sin.squeeze(1))
    for got, want in zip(_Rotary.apply(q, k, cos, sin), expected, strict=True):
        torch.testing.assert_close(got, want)


def _swapped() -> bool:
    return modeling_llama.apply_rotary_pos_emb.__module__ == rotary.__name__


def test_rotary_swap_is_counted_and_restored() -> None:
    """Relative to what the process holds already: a trainer another test left open keeps the swap in."""
    before, users = modeling_llama.apply_rotary_pos_emb, rotary._users
    first, second = rotary.fuse(), rotary.fuse()
    assert _swapped() and rotary._users == users + 2
    first()
    first()  # a second call of the same release changes nothing
    assert _swapped() and rotary._users == users + 1  # the other trainer still has it
    second()
    assert modeling_llama.apply_rotary_pos_emb is before and rotary._users == users
    assert _swapped() == (users > 0)  # HF's own function once nobody holds the swap


def _counts(model: Any, batches: Any) -> dict[str, int]:
    """How many times each fused Function ran in a forward over batches (the profiler names them)."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for mb in batches:
            loss_sums(model, mb, torch.device("cpu"))
    names = [e.name for e in prof.events()]
    return {name: names.count(name) for name in ("_RMSNorm", "_SwiGLU", "_Rotary", "aten::silu")}


def test_trainer_fusions_match_the_model_and_close_restores_it(bases_dir: Path) -> None:
    model, batches = _model(bases_dir, torch.float32)
    model.train()
    loss, grads = _loss_and_grads(model, batches)
    blocks = model.config.num_hidden_layers
    before, held = modeling_llama.apply_rotary_pos_emb, rotary._users > 0  # held: another test's open trainer
    trainer = LoraTrainer(model, torch.device("cpu"), lr=1e-4, total_steps=1)
    model.train()
    fused_loss, fused_grads = _loss_and_grads(model, batches)
    # under no_grad (as _counts runs) the norms take torch's fused forward, no Function; the MLP and rotary theirs
    counts = _counts(model, batches)
    assert counts["_SwiGLU"] == counts["_Rotary"] == blocks * len(batches) and counts["aten::silu"] == counts["_SwiGLU"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss_sums(model, batches[0], torch.device("cpu")).weighted_ce.backward()
    # every norm (two per block and the final one) but the first block's input norm, whose input (the frozen
    # embeddings) needs no gradient
    assert [e.name for e in prof.events()].count("_RMSNorm") == 2 * blocks
    assert fused_loss == pytest.approx(loss, rel=1e-5)
    assert fused_grads.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)
    trainer.close()
    assert modeling_llama.apply_rotary_pos_emb is before and _swapped() == held
    mlp = model.base_model.model.model.layers[0].mlp
    assert "forward" not in mlp.__dict__ and fused_lora.group_of(mlp.gate_proj) is None
    rotations = blocks * len(batches) if held else 0
    assert _counts(model, batches) == {
        "_RMSNorm": 0,
        "_SwiGLU": 0,
        "_Rotary": rotations,
        "aten::silu": blocks * len(batches),
    }
    again, _ = _loss_and_grads(model, batches)
    assert again == pytest.approx(loss, rel=1e-6)


def test_each_fusion_keeps_to_fp32(bases_dir: Path) -> None:
    """A bf16 base takes HF's own norms, MLP and rotation (their rounding is what the bf16 figures measured)."""
    model, batches = _model(bases_dir, torch.bfloat16)
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    undo = [fused_lora.fuse(model), rms_norm.fuse(model), swiglu.fuse(model), rotary.fuse()]
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss_sums(model, batches[0], torch.device("cpu")).weighted_ce.backward()
        names = {e.name for e in prof.events()}
        assert not names & {"_RMSNorm", "_SwiGLU", "_Rotary"}
    finally:
        for u in reversed(undo):
            u()
