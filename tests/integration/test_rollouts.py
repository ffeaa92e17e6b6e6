"""Reinforcement's sampler on the tiny model: the engine's view of the base shares the training model's weights
(no copy), and its greedy rollouts are the policy's own greedy answers, before and after the LoRA weights move
(each `publish` hands the engine the live tensors), its prefill gives the LM head a contiguous input, and a stop
cuts its sampling short."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ftserve.core.config import Settings
from ftserve.engine.generation import Row
from ftserve.engine.sampling import Sampling
from ftserve.models.bases import load_base
from ftserve.models.families import choose_target_modules
from ftserve.training.methods.base import StepAbandoned
from ftserve.training.rollouts import Rollouts, base_view

CPU = torch.device("cpu")
PROMPTS = [[5, 17, 42, 9], [88, 3, 61]]
TOKENS = 6


def _policy(bases_dir: Path, tmp_path: Path) -> tuple[PeftModel, object]:
    settings = Settings(data_dir=tmp_path, bases_dir=bases_dir)
    base, tok = load_base(settings, "ftserve-tiny", CPU)
    targets = choose_target_modules(base, None)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets.modules, fan_in_fan_out=targets.fan_in_fan_out)
    return get_peft_model(base, config), tok  # type: ignore[return-value]


def _move_lora(model: PeftModel, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@torch.no_grad()
def _greedy(model: PeftModel, prompt: list[int], stops: set[int]) -> list[int]:
    ids = list(prompt)
    out: list[int] = []
    for _ in range(TOKENS):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if token in stops:
            break
        out.append(token)
        ids.append(token)
    return out


def test_the_view_shares_the_training_models_weights(bases_dir: Path, tmp_path: Path) -> None:
    model, _ = _policy(bases_dir, tmp_path)
    view = base_view(model)
    ours = {
        n.replace(".base_layer", ""): p
        for n, p in model.get_base_model().named_parameters(remove_duplicate=False)
        if "lora_" not in n
    }
    for name, p in view.named_parameters():
        assert p.data_ptr() == ours[name].data_ptr(), name  # the same storage, not a copy
        assert not p.requires_grad


def test_rollouts_are_the_policys_greedy_answers_after_each_publish(bases_dir: Path, tmp_path: Path) -> None:
    model, tok = _policy(bases_dir, tmp_path)
    model.eval()
    rollouts = Rollouts(model, tok, Settings().engine(), CPU, "ftjob-test")  # type: ignore[arg-type]
    stops = rollouts.engine.resident(rollouts.base).stop_ids
    try:
        seen = []
        for seed in (1, 2):
            _move_lora(model, seed)
            rollouts.publish()
            groups = rollouts.sample(PROMPTS, 2, lambda _k: Sampling(max_tokens=TOKENS, temperature=0.0))
            for prompt, rows in zip(PROMPTS, groups, strict=True):
                expected = _greedy(model, prompt, stops)
                assert [r.token_ids for r in rows] == [expected, expected]
            seen.append([rows[0].token_ids for rows in groups])
        assert seen[0] != seen[1]  # the second publish changed what the engine samples
    finally:
        rollouts.close()


def test_the_prefill_hands_the_lm_head_a_contiguous_input(bases_dir: Path, tmp_path: Path) -> None:
    """The view is built from the config, without the hook load_base puts on the head: the engine's prefill asks
    for its last positions by index, so the head still gets a contiguous input (else torch copies the head per
    row: seconds per SmolLM2 prefill)."""
    model, tok = _policy(bases_dir, tmp_path)
    _move_lora(model, 3)
    rollouts = Rollouts(model, tok, Settings().engine(), CPU, "ftjob-test")  # type: ignore[arg-type]
    head = rollouts.engine.resident(rollouts.base).model.get_output_embeddings()
    seen: list[bool] = []
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    try:
        rollouts.publish()
        rollouts.sample(PROMPTS, 2, lambda _k: Sampling(max_tokens=TOKENS, temperature=0.0))
    finally:
        rollouts.close()
    assert seen and all(seen), seen


def test_a_stop_cuts_the_sampling_short_and_leaves_the_engine_idle(bases_dir: Path, tmp_path: Path) -> None:
    """Told to stop while long answers are sampled, `sample` raises StepAbandoned within about a poll, not when
    the answers end; no cut group is handed on; the engine keeps none of its rows, and the next sample runs."""
    model, tok = _policy(bases_dir, tmp_path)
    rollouts = Rollouts(model, tok, Settings().engine(), CPU, "ftjob-test")  # type: ignore[arg-type]
    handed: list[list[Row]] = []
    try:
        rollouts.publish()
        began = time.monotonic()
        with pytest.raises(StepAbandoned):
            rollouts.sample(
                PROMPTS,
                4,
                lambda k: Sampling(max_tokens=960, temperature=1.0, seed=k),  # seconds of decoding on a CPU
                lambda _i, rows: handed.append(rows),
                stopped=lambda: time.monotonic() - began > 0.3,
            )
        assert time.monotonic() - began < 3
        assert not any(r.was_cancelled for rows in handed for r in rows)  # only groups that ended on their own
        resident = rollouts.engine.resident(rollouts.base)
        assert len(resident.batch) == 0 and not rollouts.engine.scheduler.waiting
        groups = rollouts.sample(PROMPTS, 2, lambda _k: Sampling(max_tokens=TOKENS, temperature=0.0))
        assert all(len(r.token_ids) > 0 and not r.was_cancelled for rows in groups for r in rows)
    finally:
        rollouts.close()
