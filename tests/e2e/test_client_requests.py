"""What real clients send (issue 13): bounds, nulls, no-op fields, refusals by name, lone surrogates, seeds,
one bad request beside good ones, and echo + logprobs over the prompt, against a real server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.models.bases import base_path
from tests.e2e.conftest import client_for, write_prompt_completion
from tests.servers import Service

BASE = "ftserve-tiny"


@pytest.fixture(scope="module")
def client(embedded: Service) -> OpenAI:
    return client_for(embedded)


@pytest.fixture(scope="module")
def tiny_dir(bases_dir: Path) -> Path:
    return base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), BASE)


@pytest.fixture(scope="module")
def tok(tiny_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(tiny_dir))


def _post(service: Service, path: str, body: dict[str, Any] | str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(
        f"{service.base_url}{path}", content=content, headers={"content-type": "application/json"}, timeout=120
    )


def _error(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    error: dict[str, Any] = resp.json()["error"]
    return error


# -- 1. hyperparameter bounds and metadata limits -------------------------------------------------------------
def test_out_of_bounds_hyperparameters_and_metadata_are_400s_at_creation(
    embedded: Service, client: OpenAI, tmp_path: Path
) -> None:
    train = client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune")
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    base = {"model": BASE, "training_file": train.id}
    for hp, value in [
        ("n_epochs", 0), ("n_epochs", 51), ("n_epochs", 10**6), ("batch_size", 0), ("batch_size", 257),
        ("learning_rate_multiplier", -1), ("learning_rate_multiplier", 0), ("learning_rate_multiplier", 2.5e307),
    ]:  # fmt: skip
        error = _error(_post(embedded, "/v1/fine_tuning/jobs", {**base, "hyperparameters": {hp: value}}))
        assert hp in str(error["param"]), (hp, value, error)
        nested = {**base, "method": {"type": "supervised", "supervised": {"hyperparameters": {hp: value}}}}
        assert hp in str(_error(_post(embedded, "/v1/fine_tuning/jobs", nested))["param"])
    for constant in ("NaN", "Infinity", "-Infinity"):
        raw = json.dumps(base)[:-1] + f', "hyperparameters": {{"learning_rate_multiplier": {constant}}}}}'
        assert "learning_rate_multiplier" in str(_error(_post(embedded, "/v1/fine_tuning/jobs", raw))["param"])
    for metadata in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        assert _error(_post(embedded, "/v1/fine_tuning/jobs", {**base, "metadata": metadata}))["param"] == "metadata"
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before  # nothing was created
    edge = {f"k{i}": "v" * 512 for i in range(15)} | {"k" * 64: "v"}
    job = client.fine_tuning.jobs.create(
        **base, hyperparameters={"n_epochs": 1, "batch_size": 256, "learning_rate_multiplier": 10}, metadata=edge
    )
    assert job.metadata == edge
    client.fine_tuning.jobs.cancel(job.id)


# -- 2. seeds, and one bad request beside good ones -----------------------------------------------------------
def test_seed_must_be_a_64_bit_integer(embedded: Service, client: OpenAI) -> None:
    chat = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for seed in (2**64, 2**63, -(2**63) - 1):
        for path, body in (
            ("/v1/completions", {"model": BASE, "prompt": "The", "max_tokens": 2}),
            ("/v1/chat/completions", chat),
        ):
            for stream in (False, True):
                assert _error(_post(embedded, path, {**body, "seed": seed, "stream": stream}))["param"] == "seed"
    # The largest and smallest seeds serve, with several choices (seed + i wraps instead of overflowing).
    for seed in (2**63 - 1, -(2**63)):
        out = client.completions.create(model=BASE, prompt="The", max_tokens=4, n=2, seed=seed, temperature=1.0)
        again = client.completions.create(model=BASE, prompt="The", max_tokens=4, n=2, seed=seed, temperature=1.0)
        assert [c.text for c in out.choices] == [c.text for c in again.choices]


def test_bad_requests_fired_beside_good_ones_fail_alone(embedded: Service, client: OpenAI) -> None:
    """Requests that used to fail every row of their prefill, sent concurrently with normal ones: the normal
    ones all answer exactly what they answer alone."""
    prompts = [f"The {a} says:" for a in ("cat", "dog", "cow", "owl", "fish", "lion", "bear", "duck")]
    alone = {
        p: client.completions.create(model=BASE, prompt=p, max_tokens=8, temperature=0).choices[0].text for p in prompts
    }

    def normal(p: str) -> str:
        return client.completions.create(model=BASE, prompt=p, max_tokens=8, temperature=0).choices[0].text

    def bad(kind: int) -> httpx.Response:
        body: dict[str, Any] = {"model": BASE, "prompt": prompts[kind % len(prompts)], "max_tokens": 8}
        if kind % 2:
            body |= {"seed": 2**64, "n": 2, "stream": kind % 4 == 1}
        else:
            body |= {"top_p": 1e-50, "temperature": 1}  # valid: its nucleus is the top token alone
        return _post(embedded, "/v1/completions", body)

    with ThreadPoolExecutor(16) as pool:
        for _ in range(3):
            goods = [pool.submit(normal, p) for p in prompts * 2]
            bads = [pool.submit(bad, k) for k in range(8)]
            assert [g.result() for g in goods] == [alone[p] for p in prompts * 2]
            for k, b in enumerate(bads):
                resp = b.result()
                if k % 2:
                    assert resp.status_code == 400 and resp.json()["error"]["param"] == "seed"
                else:
                    assert resp.status_code == 200, resp.text
                    assert resp.json()["choices"][0]["text"] == alone[prompts[k % len(prompts)]]


# -- 3. lone surrogates -------------------------------------------------------------------------------------------
def test_lone_surrogates_are_400s_naming_the_field(embedded: Service) -> None:
    raw = '{"model": "ftserve-tiny", "max_tokens": 2, "prompt": "\\ud800"}'
    assert _error(_post(embedded, "/v1/completions", raw))["param"] == "prompt"
    raw = '{"model": "ftserve-tiny", "max_tokens": 2, "prompt": ["ok", "a\\udfff"]}'
    assert "prompt[1]" in _error(_post(embedded, "/v1/completions", raw))["message"]
    for content in ('"\\ud800"', '[{"type": "text", "text": "x\\udc00"}]'):
        raw = f'{{"model": "ftserve-tiny", "messages": [{{"role": "user", "content": {content}}}]}}'
        error = _error(_post(embedded, "/v1/chat/completions", raw))
        assert error["param"] == "messages" and "messages[0].content" in error["message"]
    raw = '{"model": "ftserve-tiny\\ud800", "prompt": "x"}'
    assert _error(_post(embedded, "/v1/completions", raw))["param"] == "model"


# -- 4. content parts, legacy function calls and unanswerable tool results are refused by name ------------------
@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
         "messages[0].content[1].type"),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]},
         "messages[0].content[0].type"),
        ({"role": "user", "content": [{"type": "file", "file": {"file_id": "file-x"}}]}, "messages[0].content[0].type"),
        ({"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
         "messages[0].function_call"),
        ({"role": "function", "name": "f", "content": "42"}, "messages[0].role"),
        ({"role": "tool", "tool_call_id": "c1", "content": "42"}, "messages[0].tool_call_id"),
    ],
)  # fmt: skip
def test_unsupported_message_parts_are_400s_naming_them(embedded: Service, message: dict[str, Any], param: str) -> None:
    body = {"model": BASE, "messages": [message, {"role": "user", "content": "hi"}], "max_tokens": 2}
    assert _error(_post(embedded, "/v1/chat/completions", body))["param"] == param


# -- 6. explicit nulls, 7. no-op fields, 9. max_tokens ------------------------------------------------------------
def test_explicit_nulls_mean_the_defaults(embedded: Service) -> None:
    plain = _post(embedded, "/v1/completions", {"model": BASE, "prompt": "The", "temperature": 0})
    nulls = dict.fromkeys(
        [
            *("n", "stream", "echo", "logprobs", "max_tokens", "stop", "seed", "best_of", "top_p", "suffix"),
            *("user", "logit_bias", "stream_options", "frequency_penalty", "presence_penalty"),
        ]
    )
    resp = _post(embedded, "/v1/completions", {"model": BASE, "prompt": "The", "temperature": 0, **nulls})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"] == plain.json()["choices"] and resp.json()["usage"]["completion_tokens"] == 16
    chat = {"model": BASE, "messages": [{"role": "user", "content": "hi", "name": None}], "temperature": 0}
    nulls = dict.fromkeys(["n", "stream", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens", "stop"])
    assert _post(embedded, "/v1/chat/completions", {**chat, **nulls}).status_code == 200


def test_no_op_fields_are_accepted_and_reasoning_effort_is_refused(embedded: Service, client: OpenAI) -> None:
    kw: dict[str, Any] = {"model": BASE, "temperature": 0, "max_tokens": 6}
    extra = {
        "store": True,
        "metadata": {"run": "eval"},
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "safety_identifier": "u1",
    }
    plain = client.completions.create(prompt="The", **kw).choices[0].text
    assert _post(embedded, "/v1/completions", {**kw, "prompt": "The", **extra}).json()["choices"][0]["text"] == plain
    messages = [{"role": "user", "content": "hi"}]
    chat_plain = client.chat.completions.create(messages=messages, **kw).choices[0].message.content  # type: ignore[arg-type]
    out = client.chat.completions.create(messages=messages, **kw, **extra)  # type: ignore[arg-type]
    assert out.choices[0].message.content == chat_plain
    error = _error(_post(embedded, "/v1/chat/completions", {**kw, "messages": messages, "reasoning_effort": "low"}))
    assert error["param"] == "reasoning_effort" and error["code"] == "unsupported_parameter"


def test_too_large_max_tokens_quotes_the_value_sent(embedded: Service) -> None:
    chat = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    for path, body in (
        ("/v1/completions", {"model": BASE, "prompt": "The", "max_tokens": 100000}),
        ("/v1/chat/completions", {**chat, "max_tokens": 100000}),
        ("/v1/chat/completions", {**chat, "max_completion_tokens": 100000}),
    ):
        error = _error(_post(embedded, path, body))
        assert "100000" in error["message"] and error["param"] in ("max_tokens", "max_completion_tokens"), error


# -- 5. echo + logprobs over the prompt, token-id prompts, scoring only -----------------------------------------
def test_echo_logprobs_score_the_prompt_like_the_model_itself(
    client: OpenAI, tok: PreTrainedTokenizerBase, tiny_dir: Path
) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    texts = ["The cat says: meow", "A dog"]
    ids = [tok(t)["input_ids"] for t in texts]
    expected = []
    with torch.inference_mode():
        for row in ids:
            lp = torch.log_softmax(model(torch.tensor([row])).logits[0].float(), -1)
            expected.append([lp[i, row[i + 1]].item() for i in range(len(row) - 1)])
    for prompt in (texts, ids, ids[0]):
        out = client.completions.create(model=BASE, prompt=prompt, echo=True, logprobs=1, max_tokens=0, temperature=0)
        for i, choice in enumerate(out.choices):
            lp = choice.logprobs
            assert lp is not None and lp.token_logprobs and lp.top_logprobs and lp.tokens and lp.text_offset
            assert choice.text == texts[i] and choice.finish_reason == "length"
            assert lp.tokens == [tok.decode([t]) for t in ids[i]]
            assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
            assert lp.token_logprobs[1:] == pytest.approx(expected[i], abs=1e-4)
            assert lp.text_offset == [len(tok.decode(ids[i][:k])) for k in range(len(ids[i]))]
        assert out.usage is not None and out.usage.completion_tokens == 0
    # With a completion, its tokens follow the prompt's, offsets counted from the start of the prompt.
    out = client.completions.create(model=BASE, prompt=texts[0], echo=True, logprobs=2, max_tokens=3, temperature=0)
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.text_offset and lp.top_logprobs
    assert out.choices[0].text == "".join(lp.tokens) or lp.tokens[-1] == tok.eos_token
    n = len(ids[0])
    assert lp.text_offset[n] == len(texts[0]) and all(t and len(t) <= 2 for t in lp.top_logprobs[1:])
    plain = client.completions.create(model=BASE, prompt=texts[0], logprobs=2, max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is not None
    assert plain.choices[0].logprobs.text_offset == lp.text_offset[n:]  # from the prompt's length, echo or not
    assert plain.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs[n:], abs=1e-5)
    # Streamed, the first chunk of each choice carries the prompt's logprobs.
    kw: dict[str, Any] = {"echo": True, "logprobs": 2, "max_tokens": 3, "temperature": 0}
    parts = [c.choices[0].logprobs for c in client.completions.create(model=BASE, prompt=texts[0], stream=True, **kw)]
    assert [t for p in parts if p for t in p.tokens or []] == lp.tokens
    assert [o for p in parts if p for o in p.text_offset or []] == lp.text_offset


def test_token_id_prompts_generate_like_their_text(client: OpenAI, tok: PreTrainedTokenizerBase) -> None:
    text = "The cow says:"
    by_text = client.completions.create(model=BASE, prompt=text, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=BASE, prompt=tok(text)["input_ids"], max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    with pytest.raises(Exception) as err:
        client.completions.create(model=BASE, prompt=[[1, 2], [len(tok) + 3]], max_tokens=1)
    assert getattr(err.value, "status_code", None) == 400
