"""Real LoRA adapters for inference tests: trained in-process on ftserve-tiny with the worker's own
tokenizer, batching, trainer and exporter, then registered as fine-tuned models like a job does."""

from __future__ import annotations

from functools import partial

import torch
from peft import LoraConfig, get_peft_model
from sqlalchemy.orm import Session

from ftserve.control.db.session import make_engine
from ftserve.control.services import catalog
from ftserve.core.config import Settings
from ftserve.core.datasets.formats import Chat, Example, Message, PromptCompletion
from ftserve.core.storage import Storage
from ftserve.engine.engine import InferenceEngine
from ftserve.models.bases import load_base, load_for_generation, pick_device
from ftserve.training.batching import padded_microbatches, step_groups
from ftserve.training.export import save_adapter
from ftserve.training.tokenize import tokenize_example
from ftserve.training.trainer import LoraTrainer

ANIMALS = ["cat", "dog", "cow", "sheep", "lion", "bird", "horse", "fish"]
SOUNDS = dict(zip(ANIMALS, ["meow", "woof", "moo", "baa", "roar", "tweet", "neigh", "blub"], strict=True))
COLORS = dict(zip(ANIMALS, ["red", "green", "blue", "yellow", "orange", "purple", "black", "white"], strict=True))
BASE = "ftserve-tiny"


def prompt(animal: str) -> str:
    return f"The {animal} says:"


def train_adapter(
    settings: Settings, job_id: str, mapping: dict[str, str], seed: int, epochs: int = 30, chat: bool = False
) -> None:
    """Train a LoRA on `prompt(animal) → ' value'` (chat: a user message `prompt(animal)` answered `value`) and
    export it where a job's final adapter goes."""
    model, tok = load_base(settings, BASE, torch.device("cpu"))
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    examples: list[Example] = [
        Chat((Message("user", prompt(a)), Message("assistant", v))) if chat else PromptCompletion(prompt(a), f" {v}")
        for a, v in mapping.items()
    ]
    data = [tokenize_example(tok, example, 0.0) for example in examples]
    steps = step_groups(len(data), len(data), seed, 0)
    trainer = LoraTrainer(peft_model, torch.device("cpu"), lr=2e-2, total_steps=len(steps) * epochs)
    pad = int(tok.pad_token_id)
    for epoch in range(epochs):
        for group in step_groups(len(data), len(data), seed, epoch):
            trainer.step(padded_microbatches([data[i] for i in group], pad, 4096))
    save_adapter(peft_model, Storage(settings).adapter_dir(job_id, None))  # type: ignore[arg-type]


def register(settings: Settings, job_id: str, suffix: str, step: int | None = None, org: str = "personal") -> str:
    """Register the job's adapter as a servable model (what the worker does at the end of a job)."""
    name = f"ft:{BASE}:{org}:{suffix}:{job_id.removeprefix('ftjob-')}" + ("" if step is None else f":ckpt-step-{step}")
    with Session(make_engine(settings.resolved_database_url())) as s:
        catalog.register(s, name, org, BASE, job_id, step)
        s.commit()
    return name


class SettingsEngine(InferenceEngine):
    """The engine as the serving role builds it (its section of the settings, the bases loaded by those settings),
    keeping the whole settings for what a test reads beside it (its storage)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.engine(), partial(load_for_generation, settings), pick_device())
        self.settings = settings
