"""Packed rows (several examples in one row, position_ids restarting) give the same loss and LoRA gradients
as padded rows: no example attends to another, under every attention kernel (ftserve_sdpa attends each
example of the row on its own, the others through a block mask); padded rows run without a mask."""

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
from ftserve.training.batching import MicroBatch, packed_microbatches, padded_microbatches
from ftserve.training.tokenize import TokenizedExample, tokenize_example
from ftserve.training.trainer import loss_sums

PAIRS = [
    ("The cat says:", " meow"),
    ("Question: What is the capital of France? Answer:", " Paris."),
    ("Translate to French: thank you ->", " merci"),
    ("one two three four five six seven eight nine", " ten"),
    ("red green blue", " yellow orange purple black white"),
]


def _lora_model(bases_dir: Path, attn: str) -> Any:
    path = base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny")
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation=attn)
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so the A matrices get non-zero gradients to compare.
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    return get_peft_model(base, cfg)


def _loss_and_grads(model: Any, batches: list[MicroBatch]) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    total_weight = float(sum(mb.weights[:, 1:].sum() for mb in batches))
    loss = 0.0
    for mb in batches:
        part = loss_sums(model, mb, torch.device("cpu")).weighted_ce / total_weight
        part.backward()
        loss += float(part.detach())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss, grads


def _examples(tok: Any) -> list[TokenizedExample]:
    return [tokenize_example(tok, PromptCompletion(p, c), 0.1) for p, c in PAIRS]


@pytest.mark.parametrize("attn", ["ftserve_sdpa", "sdpa", "eager"])
def test_packed_loss_and_gradients_equal_padded(bases_dir: Path, attn: str) -> None:
    model = _lora_model(bases_dir, attn)
    tok = AutoTokenizer.from_pretrained(
        str(base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny"))
    )
    examples = _examples(tok)
    padded = padded_microbatches(examples, tok.pad_token_id, 4096)
    packed = packed_microbatches(examples, 4096)
    assert len(packed) == 1 and packed[0].input_ids.shape[0] == 1 and packed[0].attention_mask is None
    assert packed[0].real_tokens == padded[0].real_tokens < padded[0].padded_tokens

    loss_pad, grads_pad = _loss_and_grads(model, padded)
    loss_pack, grads_pack = _loss_and_grads(model, packed)
    assert loss_pack == pytest.approx(loss_pad, abs=1e-5)
    assert grads_pad.keys() == grads_pack.keys() and len(grads_pad) > 0
    for name, g in grads_pad.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_pack[name], g, atol=1e-5, rtol=0, msg=name)


def test_ftserve_sdpa_attends_each_packed_example_alone_and_padded_rows_causally(bases_dir: Path) -> None:
    """One sdpa call per example and layer for a packed row, none with a mask; one per layer for padded rows."""
    from torch.profiler import ProfilerActivity, profile

    model = _lora_model(bases_dir, "ftserve_sdpa")
    tok = AutoTokenizer.from_pretrained(
        str(base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny"))
    )
    examples = _examples(tok)
    layers = model.config.num_hidden_layers
    for batches, calls in (
        (packed_microbatches(examples, 4096), layers * len(examples)),
        (padded_microbatches(examples, tok.pad_token_id, 4096), layers),
    ):
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            loss_sums(model, batches[0], torch.device("cpu"))
        sdpa = [e for e in prof.events() if e.name == "aten::scaled_dot_product_attention"]
        assert len(sdpa) == calls
        assert all(len(e.input_shapes) < 4 or not e.input_shapes[3] for e in sdpa)  # no attn_mask given


def test_packing_without_restarted_positions_would_leak(bases_dir: Path) -> None:
    """The control: the same row with running positions lets examples attend across the seam."""
    model = _lora_model(bases_dir, "sdpa")
    tok = AutoTokenizer.from_pretrained(
        str(base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny"))
    )
    examples = _examples(tok)
    packed = packed_microbatches(examples, 4096)[0]
    leaky = MicroBatch(
        packed.input_ids,
        None,
        torch.arange(packed.input_ids.shape[1])[None],
        packed.weights,
        packed.completion,
        packed.real_tokens,
    )
    loss_pad, _ = _loss_and_grads(model, padded_microbatches(examples, tok.pad_token_id, 4096))
    loss_leaky, _ = _loss_and_grads(model, [leaky])
    assert abs(loss_leaky - loss_pad) > 1e-3


def test_packed_rows_respect_the_row_cap(bases_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(
        str(base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny"))
    )
    examples = _examples(tok) * 3
    rows = packed_microbatches(examples, 40)
    assert sum(mb.real_tokens for mb in rows) == sum(len(e) for e in examples)
    assert all(mb.input_ids.shape[1] <= max(40, max(len(e) for e in examples)) for mb in rows)
