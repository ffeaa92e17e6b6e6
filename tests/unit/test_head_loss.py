"""The LM head and weighted cross-entropy as one chunked op (training/head_loss): the same loss, accuracy and
gradients as the model's own forward and F.cross_entropy, without a [positions, vocab] tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftserve.core.config import Settings
from ftserve.core.datasets.formats import PromptCompletion
from ftserve.models.bases import base_path
from ftserve.training import head_loss
from ftserve.training.batching import padded_microbatches
from ftserve.training.tokenize import tokenize_example
from ftserve.training.trainer import loss_sums

PAIRS = [
    ("The cat says:", " meow meow"),
    ("Translate to French: dog ->", " chien"),
    ("one two three", " four five six"),
]


def test_the_op_is_its_own_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against finite differences in float64, over several chunks (a chunk of 3 positions here), with weights that
    include a zero; the argmax is the logits'."""
    monkeypatch.setattr(head_loss, "CHUNK_BYTES", 3 * 4 * 11)
    torch.manual_seed(0)
    hidden = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64)
    targets = torch.randint(0, 11, (8,))
    weights = torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, 1.0, 0.25, 1.0], dtype=torch.float64)
    total, argmax = head_loss.weighted_ce(hidden, weight, targets, weights)
    logits = hidden @ weight.t()
    expected = (F.cross_entropy(logits, targets, reduction="none") * weights).sum()
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    assert torch.equal(argmax, logits.argmax(-1))
    assert torch.autograd.gradcheck(lambda h: head_loss.weighted_ce(h, weight, targets, weights)[0], (hidden,))


def test_loss_sums_fused_head_equals_the_models_own_logits(bases_dir: Path) -> None:
    path = base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny")
    tok = AutoTokenizer.from_pretrained(str(path))
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32), cfg)
    assert head_loss.fusable_head(model) is not None
    examples = [tokenize_example(tok, PromptCompletion(p, c), 0.1) for p, c in PAIRS]  # prompt weight 0.1
    (mb,) = padded_microbatches(examples, int(tok.pad_token_id or 0), 4096)
    assert mb.input_ids.shape[0] == 3  # several right-padded rows: zero weights at some kept positions

    sums = loss_sums(model, mb, torch.device("cpu"))
    sums.weighted_ce.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    # The model's own forward: logits at every position, F.cross_entropy, weights, argmax.
    logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1].float()
    targets, weights, comp = mb.input_ids[:, 1:], mb.weights[:, 1:], mb.completion[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    expected = (ce.view_as(weights) * weights).sum()
    expected.backward()
    assert float(sums.weighted_ce) == pytest.approx(float(expected), rel=1e-5)
    assert sums.weight == pytest.approx(float(weights.sum()))
    assert sums.correct == int(((logits.argmax(-1) == targets) & comp).sum())
    assert sums.completion_tokens == int(comp.sum()) > 0
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert p.grad.abs().max() > 0, name
            torch.testing.assert_close(fused[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert fused.keys() == {n for n, p in model.named_parameters() if p.grad is not None}


def test_a_trained_or_adapted_head_takes_the_models_own_forward(bases_dir: Path) -> None:
    path = base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny")
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert head_loss.fusable_head(adapted) is None  # the head is a LoRA layer
    plain = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).requires_grad_(False)
    assert head_loss.fusable_head(plain) is not None  # frozen, as under LoRA
    plain.get_output_embeddings().weight.requires_grad_(True)
    assert head_loss.fusable_head(plain) is None  # a head being trained needs its weight's gradient
