"""Per-token loss weights: prompt_loss_weight's end points, chat weights, the token boundary, truncation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftserve.core.config import Settings
from ftserve.core.datasets.formats import Chat, Message, PromptCompletion
from ftserve.models.bases import base_path
from ftserve.training.batching import padded_microbatches
from ftserve.training.tokenize import fit_to_length, tokenize_example
from ftserve.training.trainer import loss_sums

PAIRS = [("The cat says:", " meow"), ("Question: What is the capital of France? Answer:", " Paris.")]


@pytest.fixture(scope="module")
def tiny(bases_dir: Path) -> tuple[Any, Any]:
    path = base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), "ftserve-tiny")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(path))


def _our_loss(model: Any, tok: Any, plw: float) -> float:
    examples = [tokenize_example(tok, PromptCompletion(p, c), plw) for p, c in PAIRS]
    mb = padded_microbatches(examples, tok.pad_token_id, 4096)[0]
    with torch.no_grad():
        sums = loss_sums(model, mb, torch.device("cpu"))
    return float(sums.weighted_ce) / sums.weight


def _reference_loss(model: Any, tok: Any, mask_prompt: bool) -> float:
    """The textbook losses, token-weighted over both examples: labels = input_ids, or -100 on the prompt."""
    total, count = 0.0, 0
    for prompt, completion in PAIRS:
        ids = tok(prompt + completion)["input_ids"] + [tok.eos_token_id]
        labels = torch.tensor([ids])
        if mask_prompt:
            labels[0, : len(tok(prompt)["input_ids"])] = -100
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), labels=labels)
        n = int((labels[0, 1:] != -100).sum())
        total += float(out.loss) * n  # transformers' loss is the mean over this example's labelled tokens
        count += n
    return total / count


def test_weight_one_reproduces_labels_equal_input_ids(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    assert _our_loss(model, tok, 1.0) == pytest.approx(_reference_loss(model, tok, mask_prompt=False), rel=1e-5)


def test_weight_zero_reproduces_minus_100_masking(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    assert _our_loss(model, tok, 0.0) == pytest.approx(_reference_loss(model, tok, mask_prompt=True), rel=1e-5)


def test_intermediate_weight_is_the_weighted_mean(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    plw = 0.1
    ex = tokenize_example(tok, PromptCompletion(*PAIRS[1]), plw)
    ids = torch.tensor([ex.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    ce = F.cross_entropy(logits, ids[0, 1:], reduction="none")
    w = torch.tensor(ex.weights[1:])
    assert set(ex.weights) == {plw, 1.0}
    mb = padded_microbatches([ex], tok.pad_token_id, 4096)[0]
    with torch.no_grad():
        sums = loss_sums(model, mb, torch.device("cpu"))
    assert float(sums.weighted_ce) / sums.weight == pytest.approx(float((ce * w).sum() / w.sum()), rel=1e-5)


def test_chat_weights_assistant_one_weight_zero_message_and_rest_prompt_weight(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    chat = Chat(
        (
            Message("system", "You answer with colors."),
            Message("user", "The sky?"),
            Message("assistant", "green", weight=0),
            Message("user", "No, the sky?"),
            Message("assistant", "blue"),
        )
    )
    plw = 0.25
    ex = tokenize_example(tok, chat, plw)
    full = tok.apply_chat_template([{"role": m.role, "content": m.content} for m in chat.messages], tokenize=False)
    assert ex.input_ids == tok(full, add_special_tokens=False)["input_ids"]
    trained = [t for t, w in zip(ex.input_ids, ex.weights, strict=True) if w == 1.0]
    # Exactly the weight-1 assistant reply and its end-of-turn token are trained; generation stops there.
    assert tok.decode(trained) == "blue<|im_end|>"
    assert {w for w in ex.weights if w != 1.0} == {plw}
    rest = tok.decode([t for t, w in zip(ex.input_ids, ex.weights, strict=True) if w != 1.0])
    assert "green<|im_end|>" in rest and "You answer with colors." in rest
    assert ex.completion == [w == 1.0 for w in ex.weights]


def test_boundary_uses_prompt_ids_plus_completion_ids_as_inference_sees_them(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    prompt, completion = "The cat says: ", "meow"  # the trailing space merges with "meow" when tokenized whole
    prompt_ids = tok(prompt)["input_ids"]
    completion_ids = tok(completion, add_special_tokens=False)["input_ids"]
    whole = tok(prompt + completion)["input_ids"]
    assert whole[: len(prompt_ids)] != prompt_ids, "the test needs a prompt whose last token merges"

    ex = tokenize_example(tok, PromptCompletion(prompt, completion), 0.0)
    # At inference the server tokenizes the prompt alone and the model continues after its last token.
    assert ex.input_ids == prompt_ids + completion_ids + [tok.eos_token_id]
    assert ex.weights == [0.0] * len(prompt_ids) + [1.0] * (len(completion_ids) + 1)
    assert ex.boundary_fixed
    assert not tokenize_example(tok, PromptCompletion("The cat says:", " meow"), 0.0).boundary_fixed


def test_truncation_keeps_examples_with_a_completion_token_and_drops_the_rest(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    long_completion = tokenize_example(tok, PromptCompletion("Answer:", " one two three four five six" * 6), 0.0)
    long_prompt = tokenize_example(tok, PromptCompletion("red green blue yellow " * 10, " Paris"), 0.0)
    short = tokenize_example(tok, PromptCompletion("Answer:", " Rome"), 0.0)
    max_len = 16
    assert len(long_completion) > max_len and len(long_prompt) > max_len

    cut = fit_to_length(long_completion, max_len)
    assert cut is not None and len(cut) == max_len
    assert cut.input_ids == long_completion.input_ids[:max_len] and cut.weights == long_completion.weights[:max_len]
    assert fit_to_length(long_prompt, max_len) is None  # nothing left to learn from
    assert fit_to_length(short, max_len) == short
