"""ftserve's DPO against TRL's DPOTrainer: same model, data, beta, LoRA initialisation, optimizer and schedule,
the same per-step losses over the first 3 steps (within 1e-3) — with one forward per pair instead of
TRL's two, and reference log-probs computed once instead of every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from ftserve.core.datasets.formats import Message, Preference
from ftserve.models.chat import render_chat
from ftserve.training.methods.dpo import Dpo
from ftserve.training.preference import tokenize_pair
from ftserve.training.trainer import LoraTrainer

CPU = torch.device("cpu")
BETA, LR, BATCH, STEPS, SEED = 0.1, 5e-2, 3, 3, 7
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUESTIONS = [
    ("Say red.", "Sure! red", "red"),
    ("Name a city in Italy.", "Rome is one.", "Paris"),
    ("Count to three.", "one two three", "three two one"),
    ("What does the cat say?", "meow", "The cat says woof, of course."),
    ("Pick a color.", "blue", "I will not pick."),
    ("Translate cat to French.", "chat", "chien"),
    ("Say hello.", "hello!", "Goodbye."),
    ("Name an animal.", "A dog.", "A rock."),
    ("What is 2 + 2?", "4", "5, or maybe 4"),
]


def _lora_model(path: Path) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(SEED)  # the same LoRA initialisation on both sides
    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))  # type: ignore[return-value]


def test_per_step_losses_match_trl_dpo_trainer(bases_dir: Path, tmp_path: Path) -> None:
    path = bases_dir / "ftserve-tiny"
    tok = AutoTokenizer.from_pretrained(path)
    examples = [Preference((Message("user", q),), good, bad) for q, good, bad in QUESTIONS]
    pairs = [tokenize_pair(tok, ex) for ex in examples]

    # TRL, on the same text: the rendered prompt, and each reply up to its end-of-turn token. TRL appends the
    # EOS token to a reply that does not end with it, so its tokenizer names <|im_end|> as EOS (text only).
    trl_tok = AutoTokenizer.from_pretrained(path)
    trl_tok.eos_token = "<|im_end|>"
    rows = [
        {
            "prompt": render_chat(tok, [{"role": "user", "content": ex.messages[0].content}], True),
            "chosen": tok.decode(pair.chosen),
            "rejected": tok.decode(pair.rejected),
        }
        for ex, pair in zip(examples, pairs, strict=True)
    ]
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=LR,
        beta=BETA,
        logging_steps=1,
        train_sampling_strategy="sequential",  # ftserve's steps below take the pairs in the same order
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=SEED,
    )
    trainer = DPOTrainer(
        model=_lora_model(path), args=args, train_dataset=Dataset.from_list(rows), processing_class=trl_tok
    )
    tokenized = trainer.train_dataset
    for i, pair in enumerate(pairs):  # the same tokens on both sides
        assert (tokenized[i]["prompt_ids"], tokenized[i]["chosen_ids"], tokenized[i]["rejected_ids"]) == (
            pair.prompt,
            pair.chosen,
            pair.rejected,
        )
    trainer.train()
    trl_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    # ftserve: AdamW without weight decay, linear decay to 0 over the same 3 steps, gradients clipped at 1.
    model = _lora_model(path)
    lora = LoraTrainer(model, CPU, lr=LR, total_steps=STEPS, scheduler="linear")
    method = Dpo(
        model, pairs, [], BETA, row_cap=1024, device=CPU, reference_file=tmp_path / "ref.pt", start_adapter=None
    )
    method.prepare(lora, resumed=False)
    ours = [
        method.train_step(lora, list(range(s * BATCH, (s + 1) * BATCH)), s + 1).metrics["train_loss"]
        for s in range(STEPS)
    ]
    assert len(trl_losses) == STEPS
    assert ours == pytest.approx(trl_losses, abs=1e-3)
    assert min(ours[1:]) < ours[0] - 0.05  # the weights move: the steps compared are not all near log 2
