"""The loss mask: exactly the completion tokens and EOS carry weight, and the loss is their mean CE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import Settings
from app.datasets.formats import PromptCompletion
from models.bases import base_path
from training.batching import padded_microbatches
from training.tokenize import tokenize_example
from training.trainer import loss_sums


@pytest.fixture(scope="module")
def tiny(bases_dir: Path) -> tuple[object, object]:
    path = base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny")
    return AutoModelForCausalLM.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


def test_only_completion_and_eos_carry_weight(tiny: tuple[object, object]) -> None:
    _, tok = tiny
    ex = tokenize_example(tok, PromptCompletion("The cat says:", " meow"), prompt_loss_weight=0.0)  # type: ignore[arg-type]
    prompt_ids = tok("The cat says:")["input_ids"]  # type: ignore[operator]
    completion_ids = tok(" meow", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert ex.input_ids == prompt_ids + completion_ids + [tok.eos_token_id]  # type: ignore[attr-defined]
    n_prompt = len(prompt_ids)
    assert ex.weights == [0.0] * n_prompt + [1.0] * (len(completion_ids) + 1)


def test_loss_is_mean_ce_over_completion_tokens_only(tiny: tuple[object, object]) -> None:
    model, tok = tiny
    examples = [
        tokenize_example(tok, PromptCompletion(p, c), 0.0)  # type: ignore[arg-type]
        for p, c in [("The cat says:", " meow"), ("A much longer prompt about the dog:", " woof woof")]
    ]
    mb = padded_microbatches(examples, tok.pad_token_id, 4096)[0]  # type: ignore[attr-defined]
    sums = loss_sums(model, mb, torch.device("cpu"))  # type: ignore[arg-type]
    ours = float(sums.weighted_ce.detach()) / sums.weight

    # Reference: the standard -100 label mask and transformers' own loss, per example, token-weighted.
    total, count = 0.0, 0
    for ex in examples:
        n_prompt = ex.weights.index(1.0)
        ids = torch.tensor([ex.input_ids])
        labels = ids.clone()
        labels[0, :n_prompt] = -100
        with torch.no_grad():
            logits = model(input_ids=ids).logits  # type: ignore[operator]
        ce = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
        total += float(ce)
        count += int((labels[0, 1:] != -100).sum())
    assert sums.weight == count
    assert ours == pytest.approx(total / count, rel=1e-5)
