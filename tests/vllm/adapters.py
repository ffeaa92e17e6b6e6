"""A real PEFT adapter for SmolLM2 without training: LoRA weights drawn at random (seeded) and scaled so the
model still writes text, only different text; written where a job's final adapter goes, in the exporter's
own format (safetensors + adapter_config.json + the completion marker)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from ftserve.training.export import save_adapter


def write_random_adapter(base_dir: Path, target: Path, seed: int, rank: int = 8, scale: float = 0.3) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_adapter(peft_model, target)  # type: ignore[arg-type]
