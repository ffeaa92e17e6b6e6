"""The vllm backend against real vLLM servers: the same greedy text as the builtin engine, token for token,
for the base and an adapter; runtime adapter load on one replica, unload when the model is deleted;
streaming; structured outputs; failover between the two replicas, then a 503 when none is left."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from ftserve.engine.constraint import Constraint
from ftserve.engine.engine import ModelRef
from ftserve.engine.generation import Row
from ftserve.engine.sampling import Sampling
from ftserve.serving.backends.vllm import VllmBackend
from tests.vllm.conftest import BUILTIN, JOB, VLLM, Stack

pytestmark = pytest.mark.vllm

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Why is the sky blue? Answer in one sentence.",
    "Give me a name for a black cat.",
]
PROMPTS = ["The capital of Germany is", "def fibonacci(n):", "Once upon a time, in a small village,"]


def chat_texts(stack: Stack, model: str) -> list[tuple[str, str, int]]:
    out = []
    for content in CHATS:
        r = stack.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], temperature=0, max_tokens=32
        )
        assert r.usage is not None
        out.append((r.choices[0].message.content or "", r.choices[0].finish_reason, r.usage.completion_tokens))
    return out


def completion_texts(stack: Stack, model: str) -> list[tuple[str, str, int]]:
    out = []
    for prompt in PROMPTS:
        r = stack.client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=24)
        assert r.usage is not None
        out.append((r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens))
    return out


def served_adapters(url: str) -> set[str]:
    """The LoRA adapters a vLLM server has loaded (its /v1/models lists them with their parent)."""
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    return {m["id"] for m in models if m.get("parent")}


def test_base_model_gives_the_builtin_engines_greedy_text_token_for_token(stack: Stack) -> None:
    builtin, vllm = chat_texts(stack, BUILTIN), chat_texts(stack, VLLM)
    assert vllm == builtin
    assert any("Paris" in text for text, _, _ in vllm)
    assert completion_texts(stack, VLLM) == completion_texts(stack, BUILTIN)


def test_adapter_is_loaded_at_runtime_on_one_replica_and_matches_the_builtin_engine(stack: Stack) -> None:
    on_builtin, on_vllm = stack.register(BUILTIN, "contract"), stack.register(VLLM, "contract")
    assert all(not served_adapters(url) for url in stack.replicas)
    builtin, vllm = chat_texts(stack, on_builtin), chat_texts(stack, on_vllm)
    assert vllm == builtin
    assert vllm != chat_texts(stack, VLLM), "the adapter must change the model's answers"
    # Loaded at runtime on exactly one replica (the adapter's own, by rendezvous hashing), every request there.
    holders = [url for url in stack.replicas if f"{JOB}-final" in served_adapters(url)]
    assert len(holders) == 1
    # ...from the copy ftserve made where the servers read adapters.
    assert (stack.adapter_dir / VLLM / f"{JOB}-final" / "adapter_model.safetensors").exists()


def test_streaming_sends_the_same_text_as_deltas_with_usage(stack: Stack) -> None:
    messages = [{"role": "user", "content": CHATS[1]}]
    whole = stack.client.chat.completions.create(model=VLLM, messages=messages, temperature=0, max_tokens=40)  # type: ignore[arg-type]
    chunks = list(
        stack.client.chat.completions.create(
            model=VLLM,
            messages=messages,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 3, "text arrives in pieces, as it is generated"
    assert "".join(deltas) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # Completions stream too, stop strings cut by ftserve exactly as on the builtin engine.
    for model in (BUILTIN, VLLM):
        streamed = "".join(
            c.choices[0].text
            for c in stack.client.completions.create(
                model=model, prompt=PROMPTS[2], temperature=0, max_tokens=32, stop=[","], stream=True
            )
        )
        assert (
            streamed
            == stack.client.completions.create(
                model=BUILTIN, prompt=PROMPTS[2], temperature=0, max_tokens=32, stop=[","]
            )
            .choices[0]
            .text
        )


def test_what_the_backend_does_not_serve_is_a_clear_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        stack.client.completions.create(model=VLLM, prompt="Hi", max_tokens=4, logprobs=2)
    assert info.value.code == "unsupported_on_backend" and info.value.param == "logprobs"


def test_deleting_the_model_unloads_its_adapter_from_vllm(stack: Stack) -> None:
    name = stack.register(VLLM, "todelete")
    stack.client.completions.create(model=name, prompt=PROMPTS[0], temperature=0, max_tokens=4)
    assert any(f"{JOB}-final" in served_adapters(url) for url in stack.replicas)
    copy = stack.adapter_dir / VLLM / f"{JOB}-final"
    assert copy.is_dir()
    stack.client.models.delete(name)

    def end_state() -> tuple[bool, bool]:
        """(still loaded on a replica, its shared copy still there)"""
        return any(f"{JOB}-final" in served_adapters(url) for url in stack.replicas), copy.exists()

    deadline = time.monotonic() + 30
    while end_state() != (False, False):
        assert time.monotonic() < deadline, f"after deletion (loaded, copy present) = {end_state()}"
        time.sleep(0.2)
    assert not list(copy.parent.glob(f".{copy.name}*")), "a renamed-away copy was left behind"
    with pytest.raises(openai.NotFoundError):
        stack.client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=4)


def test_constrained_rows_follow_their_schema_through_vllms_structured_outputs(stack: Stack) -> None:
    """Rows carrying a Constraint (what response_format and forced tool calls build) run constrained on vLLM."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    spec = stack.settings.base_models[VLLM]
    backend = VllmBackend(stack.settings, {VLLM: spec})
    try:
        tok = backend.tokenizer(VLLM)
        ids = tok("A JSON object naming a cat:")["input_ids"]
        rows = [
            Row(
                list(ids),
                Sampling(max_tokens=40, temperature=0.0, constraint=Constraint("json_schema", json.dumps(schema))),
            ),
            Row(
                list(ids),
                Sampling(max_tokens=8, temperature=0.0, constraint=Constraint("lark", 'start: "yes" | "no"')),
            ),
        ]
        backend.run(ModelRef(VLLM, VLLM), rows)
    finally:
        backend.close()
    assert isinstance(json.loads(rows[0].text)["name"], str) and rows[0].finish_reason == "stop"
    assert rows[1].text in ("yes", "no")


def test_responses_create_and_stream_on_the_vllm_base(stack: Stack) -> None:
    """/v1/responses on the vLLM-served base: a chat plan on either backend, so the builtin engine's greedy text
    token for token, stored and retrievable; streamed, the semantic events (numbered) assemble the same text."""
    ask = {"input": CHATS[0], "max_output_tokens": 24, "temperature": 0}
    builtin = stack.client.responses.create(model=BUILTIN, **ask)  # type: ignore[arg-type]
    on_vllm = stack.client.responses.create(model=VLLM, **ask)  # type: ignore[arg-type]
    assert on_vllm.output_text == builtin.output_text and "Paris" in on_vllm.output_text
    assert on_vllm.usage and builtin.usage and on_vllm.usage.output_tokens == builtin.usage.output_tokens
    assert on_vllm.status == builtin.status and on_vllm.model == VLLM
    assert stack.client.responses.retrieve(on_vllm.id).output_text == on_vllm.output_text
    events = list(stack.client.responses.create(model=VLLM, stream=True, **ask))  # type: ignore[arg-type]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len([d for d in deltas if d]) > 3, "text arrives in pieces, as it is generated"
    assert "".join(deltas) == on_vllm.output_text
    last = events[-1]
    assert last.type == f"response.{on_vllm.status}" and last.response.output_text == on_vllm.output_text  # type: ignore[union-attr]


def test_a_replica_that_dies_fails_over_then_none_left_is_a_503(stack: Stack) -> None:
    """Runs last in the module: it stops the vLLM servers."""
    name = stack.register(VLLM, "failover")
    before = completion_texts(stack, name)
    holder = next(url for url in stack.replicas if f"{JOB}-final" in served_adapters(url))
    stack.replicas[holder].stop()
    # The adapter is loaded on the surviving replica and the answers do not change.
    assert completion_texts(stack, name) == before
    assert chat_texts(stack, VLLM)[0][0]
    for proc in stack.replicas.values():
        proc.stop()
    with pytest.raises(openai.InternalServerError) as info:
        stack.client.completions.create(model=VLLM, prompt=PROMPTS[0], max_tokens=4)
    assert info.value.status_code == 503
    assert info.value.code == "backend_unavailable"
    # The builtin base of the same server is not affected.
    assert stack.client.completions.create(model=BUILTIN, prompt=PROMPTS[0], max_tokens=4).choices[0].text
