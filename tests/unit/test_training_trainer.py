"""LoraTrainer: learning-rate schedules, gradient checkpointing changes memory not results, seeded determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftserve.core.config import Settings
from ftserve.core.datasets.formats import PromptCompletion
from ftserve.models.bases import base_path
from ftserve.training.batching import padded_microbatches
from ftserve.training.tokenize import tokenize_example
from ftserve.training.trainer import LoraTrainer, lr_factor


def test_schedules() -> None:
    assert [lr_factor(s, 10, 2, "linear") for s in (0, 1, 2, 6)] == [0.5, 1.0, 1.0, 0.5]
    assert lr_factor(10, 10, 2, "linear") == 0.0
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(9, 10, 0, "constant") == 1.0


def _run(bases_dir: Path, seed: int, checkpointing: bool, steps: int = 3) -> tuple[list[float], dict[str, Any]]:
    path = base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny")
    tok = AutoTokenizer.from_pretrained(str(path))
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    pairs = [("The cat says:", " meow"), ("Translate to French: dog ->", " chien"), ("one two", " three four")]
    batch = padded_microbatches([tokenize_example(tok, PromptCompletion(p, c), 0.0) for p, c in pairs], 0, 4096)
    trainer = LoraTrainer(model, torch.device("cpu"), lr=1e-2, total_steps=steps, gradient_checkpointing=checkpointing)
    losses = [trainer.step(batch).loss for _ in range(steps)]
    trainer.close()
    assert not base.is_gradient_checkpointing
    return losses, {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_same_seed_same_curve_and_weights_and_checkpointing_changes_nothing(bases_dir: Path) -> None:
    losses, weights = _run(bases_dir, seed=5, checkpointing=False)
    again, again_weights = _run(bases_dir, seed=5, checkpointing=False)
    assert losses == again and losses[-1] < losses[0]
    assert all(torch.equal(weights[k], again_weights[k]) for k in weights)
    ckpt, ckpt_weights = _run(bases_dir, seed=5, checkpointing=True)
    assert ckpt == pytest.approx(losses, abs=1e-5)
    for k in weights:
        torch.testing.assert_close(ckpt_weights[k], weights[k], atol=1e-5, rtol=0)
    other, _ = _run(bases_dir, seed=6, checkpointing=False)
    assert other != losses


def test_bf16_base_computes_lora_in_bf16_and_keeps_fp32_masters(bases_dir: Path) -> None:
    path = base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny")
    tok = AutoTokenizer.from_pretrained(str(path))
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    pairs = [("The cat says:", " meow"), ("Translate to French: dog ->", " chien"), ("one two", " three four")]
    examples = [tokenize_example(tok, PromptCompletion(p, c), 0.0) for p, c in pairs]
    # One micro-batch per example: gradients are summed across them in fp32.
    batches = [mb for ex in examples for mb in padded_microbatches([ex], 0, 4096)]
    trainer = LoraTrainer(model, torch.device("cpu"), lr=1e-2, total_steps=4)
    assert trainer.mixed and {p.dtype for p in trainer.live} == {torch.bfloat16}
    assert {m.dtype for m in trainer.params} == {torch.float32}
    losses = [trainer.step(batches).loss for _ in range(4)]
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(trainer.live, trainer.params, strict=True))
    # Updates smaller than bf16's resolution still accumulate in the masters.
    assert any(not torch.equal(m, m.to(torch.bfloat16).float()) for m in trainer.params)
    with trainer.full_precision():
        saved = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        assert {v.dtype for v in saved.values()} == {torch.float32}
    assert {p.dtype for p in trainer.live} == {torch.bfloat16}
    trainer.close()
    assert all(p.dtype == torch.float32 and p is not m for p, m in zip(trainer.live, trainer.params, strict=True))
    assert all(torch.equal(p, m) for p, m in zip(trainer.live, trainer.params, strict=True))
