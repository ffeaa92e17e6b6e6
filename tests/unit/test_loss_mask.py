"""The loss mask: exactly the completion tokens and EOS carry weight, and the loss is their mean CE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftserve.core.config import Settings
from ftserve.core.datasets.formats import Chat, Message, PromptCompletion, ToolCall
from ftserve.models import tools as models_tools
from ftserve.models.bases import base_path
from ftserve.models.chat import render_chat
from ftserve.models.tools import format_tool_call, parse_tool_calls
from ftserve.training.batching import padded_microbatches
from ftserve.training.tokenize import TokenizedExample, tokenize_example
from ftserve.training.trainer import loss_sums


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


def _trained_spans(tok: Any, ex: TokenizedExample) -> list[str]:
    """The text of each run of consecutive weighted tokens."""
    spans: list[list[int]] = []
    for i, (t, w) in enumerate(zip(ex.input_ids, ex.weights, strict=True)):
        if w:
            if not spans or not ex.weights[i - 1]:
                spans.append([])
            spans[-1].append(t)
    return [tok.decode(s) for s in spans]


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = ToolCall("call_1", "get_weather", '{"city":"Oslo"}')


def _tool_chat(call_weight: int) -> Chat:
    return Chat(
        (
            Message("user", "Weather in Oslo?"),
            Message("assistant", None, weight=call_weight, tool_calls=(CALL,)),
            Message("tool", '{"temperature": -3}', tool_call_id="call_1"),
            Message("assistant", "It is -3 in Oslo."),
        ),
        tools=(WEATHER,),
    )


def test_tool_calls_carry_the_loss_and_tool_results_do_not(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    ex = tokenize_example(tok, _tool_chat(call_weight=1), prompt_loss_weight=0.0)
    call = format_tool_call("get_weather", '{"city":"Oslo"}')
    # Exactly the call (as serving renders and parses it) and the answer, each with its end-of-turn token.
    assert _trained_spans(tok, ex) == [call + "<|im_end|>", "It is -3 in Oslo.<|im_end|>"]
    assert parse_tool_calls(call) == (None, [models_tools.ToolCall("get_weather", '{"city": "Oslo"}')])
    everything = tok.decode(ex.input_ids)
    assert '{"temperature": -3}' in everything and "get_weather" in everything.split(call)[0]  # tools in the prompt
    # The ids are the whole rendered conversation, tokenized as serving tokenizes the same conversation.
    rendered = render_chat(tok, [m.as_openai() for m in _tool_chat(1).messages], tools=[WEATHER])
    assert ex.input_ids == tok(rendered, add_special_tokens=False)["input_ids"]


def test_a_weight_0_tool_call_is_context(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    ex = tokenize_example(tok, _tool_chat(call_weight=0), prompt_loss_weight=0.0)
    assert _trained_spans(tok, ex) == ["It is -3 in Oslo.<|im_end|>"]
    # With prompt_loss_weight, the call, the tools and the tool result weigh like the rest of the prompt.
    weighted = tokenize_example(tok, _tool_chat(call_weight=0), prompt_loss_weight=0.1)
    assert set(weighted.weights) == {0.1, 1.0} and weighted.input_ids == ex.input_ids
