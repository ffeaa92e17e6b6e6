"""RFT's rollouts: ftserve's engine over the training model's own base weights samples what the policy (base +
its current LoRA) generates, and its prefill hands the LM head a contiguous input (the view is built from the
config, without the hook load_base puts on the head)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftserve.core.config import Settings
from ftserve.models.bases import prepare_base
from ftserve.training.rollouts import Rollouts, Sampling


def test_rollouts_follow_the_policy_and_prefill_contiguously(bases_dir: Path) -> None:
    settings = Settings(data_dir=bases_dir, bases_dir=bases_dir)
    path = prepare_base(settings, "ftserve-tiny")
    tok = AutoTokenizer.from_pretrained(str(path))
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(path)), LoraConfig(r=4, target_modules="all-linear")
    )
    with torch.no_grad():  # a policy that differs from its base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    prompts = [tok("Tell me about the river.").input_ids, tok("Hi").input_ids]
    rollouts = Rollouts(model, tok, settings.engine(), torch.device("cpu"), "ftjob-test")
    head = rollouts.engine.resident(rollouts.base).model.get_output_embeddings()
    seen: list[bool] = []
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    try:
        rollouts.publish()
        groups = rollouts.sample(prompts, 2, lambda _k: Sampling(max_tokens=6, temperature=0.0))
    finally:
        rollouts.close()
    assert seen and all(seen), seen
    model.eval()
    for prompt, rows in zip(prompts, groups, strict=True):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)
        expected = out[0, len(prompt) :].tolist()
        for row in rows:  # greedy: the engine's tokens are the policy's (generate pads past a stop)
            assert row.token_ids and row.token_ids == expected[: len(row.token_ids)]
