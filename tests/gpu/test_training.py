"""Training on the check's device: a LoRA step on a bf16 base (the trainer's fp32 master weights, the attention
kernel the worker picks there), and a step resumed from a saved resume point equal to the same step run on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ftserve.core.config import Settings
from ftserve.core.datasets.formats import PromptCompletion
from ftserve.core.storage import Storage
from ftserve.models.bases import load_base, training_attention
from ftserve.training import resume
from ftserve.training.batching import MicroBatch, padded_microbatches, step_groups
from ftserve.training.export import save_adapter
from ftserve.training.tokenize import tokenize_example
from ftserve.training.trainer import LoraTrainer
from tests.gpu.target import Target, assert_same_update
from tests.inference_adapters import ANIMALS, BASE, SOUNDS, prompt

pytestmark = pytest.mark.gpu
JOB, SEED = "ftjob-gpucheck", 5


def _settings(target: Target, data: Path, bases_dir: Path) -> Settings:
    settings = Settings(data_dir=data, bases_dir=bases_dir)
    settings.base_models[BASE].dtype = target.dtype
    return settings


def _trainer(settings: Settings, target: Target, point: resume.ResumePoint | None) -> tuple[PeftModel, LoraTrainer]:
    """A fresh copy of the base on the device with a new LoRA, or the resume point's, and its trainer (restored
    from the point as training/loop.fit restores it)."""
    attention = training_attention("auto", target.device)
    base, _ = load_base(settings, BASE, target.device, attn_implementation=attention)
    torch.manual_seed(SEED)
    if point is None:
        config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
        model: PeftModel = get_peft_model(base, config)  # type: ignore[assignment]
    else:
        model = PeftModel.from_pretrained(base, str(point.path), is_trainable=True)
    lr = settings.base_models[BASE].base_learning_rate
    trainer = LoraTrainer(model, target.device, lr=lr, total_steps=2)
    if point is not None:
        trainer.optimizer.load_state_dict(point.optimizer)
        trainer.scheduler.load_state_dict(point.scheduler)
    return model, trainer


def _steps(settings: Settings) -> list[list[MicroBatch]]:
    """Two optimizer steps of four examples each, as padded micro-batches."""
    from transformers import AutoTokenizer

    from ftserve.models.bases import base_path

    tok = AutoTokenizer.from_pretrained(str(base_path(settings, BASE)))
    data = [tokenize_example(tok, PromptCompletion(prompt(a), f" {SOUNDS[a]}"), 0.0) for a in ANIMALS]
    groups = step_groups(len(data), 4, SEED, 0)
    return [padded_microbatches([data[i] for i in g], int(tok.pad_token_id), 4096) for g in groups]


def _masters(model: PeftModel, trainer: LoraTrainer) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) weights at full precision, on the CPU."""
    with trainer.full_precision():
        return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_bf16_lora_step_then_a_resumed_step_equals_running_on(
    target: Target, bases_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(target, tmp_path / "data", bases_dir)
    steps = _steps(settings)
    model, trainer = _trainer(settings, target, None)
    before = _masters(model, trainer)
    first = trainer.step(steps[0])

    # The CUDA path under test: a bf16 base on the device, LoRA weights computing in bf16 with fp32 masters.
    frozen = next(p for p in model.parameters() if not p.requires_grad)
    assert (frozen.device.type, frozen.dtype) == (target.device.type, torch.bfloat16)
    assert trainer.mixed and {p.dtype for p in trainer.live} == {torch.bfloat16}
    assert {p.dtype for p in trainer.params} == {torch.float32}
    assert torch.isfinite(torch.tensor(first.loss)) and first.tokens > 0
    moved = _masters(model, trainer)
    assert any(not torch.equal(moved[k], before[k]) for k in before), "the step changed the LoRA weights"

    storage = Storage(settings)
    state = resume.trainer_state(trainer, resume.Progress(step=1, epoch=0, index=1))
    with trainer.full_precision():
        save_adapter(model, storage.adapter_dir(JOB, 1), state)  # type: ignore[arg-type]
    on = trainer.step(steps[1])
    ran_on = _masters(model, trainer)
    trainer.close()

    point = resume.latest(storage, JOB)
    assert point is not None and point.progress.step == 1
    model, trainer = _trainer(settings, target, point)
    assert torch.equal(_masters(model, trainer)[next(iter(moved))], next(iter(moved.values())))
    again = trainer.step(steps[1])
    resumed = _masters(model, trainer)
    trainer.close()

    assert again.tokens == on.tokens
    assert again.loss == pytest.approx(on.loss, rel=1e-6)  # the same bf16 weights on the same inputs
    assert_same_update(resumed, ran_on, settings.base_models[BASE].base_learning_rate, target.dry)
