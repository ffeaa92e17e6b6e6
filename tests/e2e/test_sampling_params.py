"""logit_bias, frequency/presence penalties and chat logprobs through the openai client, on the tiny base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.models.bases import base_path
from tests.e2e.conftest import client_for
from tests.servers import Service

BASE = "ftserve-tiny"


@pytest.fixture(scope="module")
def client(embedded: Service) -> OpenAI:
    return client_for(embedded)


@pytest.fixture(scope="module")
def tok(bases_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), BASE)))


def _stop_ids(tok: PreTrainedTokenizerBase) -> list[int]:
    return sorted({int(tok.eos_token_id), int(tok.convert_tokens_to_ids("<|im_end|>"))})


def test_default_max_tokens_is_16_when_end_of_text_is_banned(client: OpenAI, tok: PreTrainedTokenizerBase) -> None:
    ban = {str(t): -100 for t in _stop_ids(tok)}
    for seed in range(3):
        out = client.completions.create(model=BASE, prompt="The", temperature=1.0, seed=seed, logit_bias=ban)
        assert out.choices[0].finish_reason == "length"
        assert out.usage is not None and out.usage.completion_tokens == 16


def test_logit_bias_forces_a_token(client: OpenAI, tok: PreTrainedTokenizerBase) -> None:
    forced = tok.convert_tokens_to_ids(tok.tokenize(" cat"))[0]
    out = client.completions.create(
        model=BASE, prompt="The", temperature=0, max_tokens=4, logprobs=1, logit_bias={str(forced): 100}
    )
    logprobs = out.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens == [tok.decode([forced])] * 4


def test_penalties_pick_the_best_token_after_subtracting_them(client: OpenAI) -> None:
    """Each greedy step's choice beats every reported alternative once OpenAI's penalties are subtracted."""
    freq, presence = 0.8, 1.2
    out = client.completions.create(
        model=BASE, prompt="The", temperature=0, max_tokens=24, logprobs=5,
        frequency_penalty=freq, presence_penalty=presence,
    )  # fmt: skip
    plain = client.completions.create(model=BASE, prompt="The", temperature=0, max_tokens=24)
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    counts: dict[str, int] = {}

    def penalty(t: str) -> float:
        return counts.get(t, 0) * freq + (presence if counts.get(t) else 0.0)

    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob is not None
        for alt, alt_logprob in top.items():
            if "\ufffd" in token + alt:  # byte tokens all decode to U+FFFD: their counts can't be told apart
                continue
            assert logprob - penalty(token) >= alt_logprob - penalty(alt) - 1e-4, (token, alt)
        counts[token] = counts.get(token, 0) + 1
    # The penalties changed what greedy decoding says (the tiny model repeats itself without them).
    assert out.choices[0].text != plain.choices[0].text


def test_bad_logit_bias_is_a_400_naming_the_parameter(client: OpenAI, tok: PreTrainedTokenizerBase) -> None:
    for bias in ({"cat": 1}, {"5": 101}, {str(len(tok) + 10): 1}):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=BASE, prompt="The", logit_bias=bias)  # type: ignore[arg-type]
        assert "logit_bias" in str(err.value)


def test_chat_logprobs_match_the_sdk_type_and_the_text(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Name an animal."}]
    out = client.chat.completions.create(
        model=BASE,
        messages=messages,
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    ChatCompletion.model_validate(out.model_dump())
    lp = out.choices[0].logprobs
    assert lp is not None and lp.content
    assert "".join(t.token for t in lp.content) == out.choices[0].message.content
    for t in lp.content:
        assert len(t.top_logprobs) == 3 and t.bytes == list(t.token.encode())
        # Greedy: the chosen token is the most likely one.
        assert t.logprob == pytest.approx(max(a.logprob for a in t.top_logprobs), abs=1e-5)
    plain = client.chat.completions.create(model=BASE, messages=messages, temperature=0, max_tokens=8)  # type: ignore[arg-type]
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=BASE, messages=messages, top_logprobs=2)  # type: ignore[arg-type]


def test_each_streamed_choice_finishes_when_it_ends(client: OpenAI, tok: PreTrainedTokenizerBase) -> None:
    """With n=2, the choice that stops early gets its finish_reason chunk while the other still streams."""
    # A nudge towards end-of-text makes early stops common (about half of the seeds qualify below).
    bias = {str(tok.eos_token_id): 4}
    kw: dict[str, Any] = {"model": BASE, "prompt": "The", "n": 2, "temperature": 1.0, "max_tokens": 16}
    kw["logit_bias"] = bias

    def first_stops_well_before_second(seed: int) -> bool:
        first, second = client.completions.create(seed=seed, logprobs=0, **kw).choices
        assert first.logprobs is not None and second.logprobs is not None
        lengths = len(first.logprobs.tokens or []), len(second.logprobs.tokens or [])
        return first.finish_reason == "stop" and lengths[0] + 2 <= lengths[1]

    seed = next(s for s in range(64) if first_stops_well_before_second(s))
    whole = client.completions.create(seed=seed, **kw)
    chunks = [c for c in client.completions.create(seed=seed, stream=True, **kw) if c.choices]
    events = [(c.choices[0].index, c.choices[0].text, c.choices[0].finish_reason) for c in chunks]
    for i, choice in enumerate(whole.choices):
        assert "".join(text for index, text, _ in events if index == i) == choice.text
        assert [f for index, _, f in events if index == i and f] == [choice.finish_reason]
    stopped_at = events.index((0, "", "stop"))
    assert any(index == 1 and text for index, text, _ in events[stopped_at + 1 :])


def test_best_of_returns_the_most_likely_candidates(client: OpenAI, tok: PreTrainedTokenizerBase) -> None:
    ban = {str(t): -100 for t in _stop_ids(tok)}  # every candidate runs max_tokens: all scores are visible
    kw: dict[str, Any] = {"model": BASE, "prompt": ["The", "A"], "temperature": 1.0, "seed": 3, "max_tokens": 6}
    every = client.completions.create(n=4, best_of=4, logprobs=0, logit_bias=ban, **kw)

    def mean(choice: Any) -> float:
        return sum(choice.logprobs.token_logprobs) / len(choice.logprobs.token_logprobs)

    best = client.completions.create(n=2, best_of=4, logit_bias=ban, **kw)
    assert [c.index for c in best.choices] == [0, 1, 2, 3]
    for p in range(2):
        candidates = sorted(every.choices[4 * p : 4 * p + 4], key=mean, reverse=True)
        assert [c.text for c in best.choices[2 * p : 2 * p + 2]] == [c.text for c in candidates[:2]]
    assert best.choices[0].logprobs is None  # ranked by logprobs, returned only when asked for
    assert best.usage is not None and best.usage.completion_tokens == 2 * 4 * 6  # every candidate counts

    for bad in ({"n": 3, "best_of": 2}, {"n": 1, "best_of": 2, "stream": True}, {"suffix": " end"}):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=BASE, prompt="The", **bad)
        assert err.value.param in {"best_of", "suffix"}


def test_streamed_logprobs_add_up_to_the_whole_ones(client: OpenAI) -> None:
    kw: dict[str, Any] = {"model": BASE, "prompt": "The", "temperature": 0, "max_tokens": 12, "logprobs": 2}
    whole = client.completions.create(**kw).choices[0].logprobs
    assert whole is not None and whole.tokens
    parts = [c.choices[0].logprobs for c in client.completions.create(stream=True, **kw) if c.choices]
    assert all(p is not None for p in parts)
    assert [t for p in parts for t in p.tokens or []] == whole.tokens  # type: ignore[union-attr]
    assert [o for p in parts for o in p.text_offset or []] == whole.text_offset  # type: ignore[union-attr]
    streamed = [v for p in parts for v in p.token_logprobs or []]  # type: ignore[union-attr]
    assert streamed == pytest.approx(whole.token_logprobs, abs=1e-5)

    messages = [{"role": "user", "content": "Name an animal."}]
    chat: dict[str, Any] = {"model": BASE, "messages": messages, "temperature": 0, "max_tokens": 8}
    full = client.chat.completions.create(logprobs=True, top_logprobs=2, **chat).choices[0].logprobs
    assert full is not None and full.content
    chunks = list(client.chat.completions.create(logprobs=True, top_logprobs=2, stream=True, **chat))
    per_chunk = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    tokens = [t.token for lp in per_chunk for t in lp.content or []]  # type: ignore[union-attr]
    assert tokens == [t.token for t in full.content]
    plain = list(client.chat.completions.create(stream=True, **chat))
    assert all(c.choices[0].logprobs is None for c in plain if c.choices)


def test_a_chat_choice_that_ends_at_once_still_streams_its_role(client: OpenAI, tok: PreTrainedTokenizerBase) -> None:
    end_now = {str(t): 100 for t in _stop_ids(tok)}
    messages = [{"role": "user", "content": "hi"}]
    chunks = [
        c
        for c in client.chat.completions.create(
            model=BASE,
            messages=messages,
            logit_bias=end_now,
            stream=True,  # type: ignore[arg-type]
        )
        if c.choices
    ]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
