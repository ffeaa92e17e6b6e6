"""response_format through a real server: the official client's parse() on SmolLM2 (50 varied prompts at
once) and on ftserve-tiny (random weights: only the grammar makes its output valid), json_object, streamed
replies that agree with non-streamed ones, the completions extension, the 400s, and the client libraries
people use for structured output (LangChain, instructor, litellm)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from tests.e2e.conftest import client_for
from tests.servers import Service

# Base models only, no artifact kept: the S3 pass of `make test` would repeat it for nothing.
pytestmark = pytest.mark.local_storage

SMOL = "smollm2-135m-instruct"
TINY = "ftserve-tiny"


@pytest.fixture(scope="module")
def client(smollm2_embedded: Service) -> OpenAI:
    # A shared CI machine can be slow: a generous timeout (nothing here waits on purpose).
    return client_for(smollm2_embedded, timeout=600)


# -- SmolLM2: varied prompts, several schemas in one batch ------------------------------------------------------


# Every string and number is bounded, so every reply ends within max_completion_tokens whatever the model
# writes inside a string (100 tokens hold the largest: four items of 16 characters).
class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=130)


class Sentiment(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]


class Capital(BaseModel):
    country: str = Field(max_length=20)
    capital: str = Field(max_length=20)


class Arithmetic(BaseModel):
    result: int = Field(ge=-1000, le=1000)


class Shopping(BaseModel):
    items: list[Annotated[str, Field(max_length=16)]] = Field(max_length=4)


PEOPLE = [("Alice", 30), ("Bob", 45), ("Carla", 22), ("Dmitri", 67), ("Eve", 19), ("Farid", 52), ("Grace", 38)]
PEOPLE += [("Hiro", 27), ("Ines", 74), ("Jamal", 33)]
REVIEWS = [
    "I loved this phone, the battery lasts for days!",
    "Terrible service, I will never come back.",
    "The package arrived on Tuesday.",
    "Best pizza I have had in years.",
    "The screen cracked after one week.",
    "It is a chair. It has four legs.",
    "Absolutely wonderful staff and a great view.",
    "The movie was boring and far too long.",
    "Shipping took three days.",
    "I am so happy with my new bike!",
]
COUNTRIES = ["France", "Japan", "Italy", "Spain", "Germany", "Canada", "Egypt", "Peru", "Kenya", "Norway"]
SUMS = [(2, 3), (10, 7), (6, 6), (12, 30), (100, 1), (9, 8), (40, 2), (15, 15), (21, 4), (3, 33)]
LISTS = ["pancakes", "a salad", "tacos", "a fruit smoothie", "pasta", "soup", "an omelette", "a sandwich"]
LISTS += ["pizza", "a cake"]


def smol_prompts() -> list[tuple[str, type[BaseModel]]]:
    """50 varied prompts, ten per schema."""
    out: list[tuple[str, type[BaseModel]]] = []
    out += [(f"{n} is {a} years old. Extract the person's name and age.", Person) for n, a in PEOPLE]
    out += [(f"Classify the sentiment of this review: {r}", Sentiment) for r in REVIEWS]
    out += [(f"What is the capital of {c}?", Capital) for c in COUNTRIES]
    out += [(f"Compute {a} + {b}.", Arithmetic) for a, b in SUMS]
    out += [(f"List the ingredients I need to make {dish}.", Shopping) for dish in LISTS]
    assert len(out) == 50
    return out


def test_parse_returns_an_object_for_50_of_50_prompts_on_smollm2(client: OpenAI) -> None:
    def ask(item: tuple[str, type[BaseModel]]) -> Any:
        text, model = item
        reply = client.chat.completions.parse(
            model=SMOL,
            messages=[{"role": "user", "content": text}],
            response_format=model,
            temperature=0,
            max_completion_tokens=100,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        return choice.message.parsed

    items = smol_prompts()
    with ThreadPoolExecutor(len(items)) as pool:  # concurrently: they share the engine's batch
        parsed = list(pool.map(ask, items))
    for (_, model), obj in zip(items, parsed, strict=True):
        assert isinstance(obj, model)
    capitals = {p.country.lower(): p.capital.lower() for p in parsed if isinstance(p, Capital)}
    assert capitals.get("france") == "paris", capitals  # the model's answer, not only its shape


# -- ftserve-tiny: random weights, bounded schemas ---------------------------------------------------------------


class Ticket(BaseModel):
    priority: Literal["low", "medium", "high"]
    count: int = Field(ge=1, le=9)
    tag: str = Field(max_length=5)
    done: bool


def test_parse_on_a_random_model_for_bounded_schemas(client: OpenAI) -> None:
    def ask(seed: int) -> list[Ticket | None]:
        reply = client.chat.completions.parse(
            model=TINY,
            messages=[{"role": "user", "content": f"Ticket number {seed}"}],
            response_format=Ticket,
            temperature=1.0,
            seed=seed,
            n=4,
            max_completion_tokens=80,
        )
        assert all(c.finish_reason == "stop" for c in reply.choices)
        return [c.message.parsed for c in reply.choices]

    with ThreadPoolExecutor(8) as pool:
        parsed = [p for ps in pool.map(ask, range(8)) for p in ps]
    assert len(parsed) == 32 and all(isinstance(p, Ticket) for p in parsed)
    assert len({p.model_dump_json() for p in parsed if p is not None}) > 8, "still sampled, within the grammar"


def test_json_object_returns_parseable_json(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Describe a cat as a JSON object with the keys name and age."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_completion_tokens=120,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("model", [SMOL, TINY])
def test_streamed_and_non_streamed_replies_agree(client: OpenAI, model: str) -> None:
    kw: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Alice is 30 years old. Extract the person's name and age."}],
        "temperature": 0,
        "max_completion_tokens": 80,
    }
    schema = {"type": "json_schema", "json_schema": {"name": "Ticket", "schema": Ticket.model_json_schema()}}
    plain = client.chat.completions.create(response_format=schema, **kw)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(response_format=schema, stream=True, **kw))  # type: ignore[arg-type]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason == "stop"
    Ticket.model_validate_json(streamed)
    # The SDK's stream helper assembles and parses the same object.
    with client.chat.completions.stream(response_format=Ticket, **kw) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Ticket.model_validate_json(streamed)


def test_completions_take_response_format_as_an_extension(client: OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "Ticket", "schema": Ticket.model_json_schema()}}
    out = client.completions.create(
        model=TINY, prompt=["The ticket:", "Another ticket:"], max_tokens=80, extra_body={"response_format": fmt}
    )
    for choice in out.choices:
        assert choice.finish_reason == "stop"
        Ticket.model_validate_json(choice.text)
    plain = client.completions.create(model=TINY, prompt="The ticket:", max_tokens=8, temperature=0)
    assert not plain.choices[0].text.startswith("{"), "no response_format: free text"


def test_schemas_the_library_cannot_compile_are_400s(client: OpenAI, smollm2_embedded: Service) -> None:
    unique = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    fmt = {"type": "json_schema", "json_schema": {"name": "u", "schema": unique}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": "x"}],
            response_format=fmt,  # type: ignore[arg-type]
        )
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("response_format", "invalid_json_schema")
    assert "uniqueItems" in error["message"]
    # The same on the completions extension; and a format that is not one of the three.
    for path, body in [
        ("completions", {"model": TINY, "prompt": "x", "response_format": fmt}),
        (
            "chat/completions",
            {"model": TINY, "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
        ),
        (
            "chat/completions",
            {"model": TINY, "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}},
        ),
    ]:
        r = httpx.post(f"{smollm2_embedded.base_url}/v1/{path}", json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"].startswith("response_format"), r.text
    # The server still answers constrained and free requests afterwards.
    ok = client.chat.completions.parse(
        model=TINY, messages=[{"role": "user", "content": "x"}], response_format=Ticket, max_completion_tokens=80
    )
    assert isinstance(ok.choices[0].message.parsed, Ticket)


# -- client libraries ------------------------------------------------------------------------------------------


class Contact(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=130)


PROMPT = "Bob is 45 years old. Extract the person's name and age."


def test_langchain_with_structured_output(smollm2_embedded: Service) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=SMOL, base_url=f"{smollm2_embedded.base_url}/v1", api_key="anything", temperature=0, max_retries=0
    )
    out = llm.with_structured_output(Contact).invoke(PROMPT)  # method="json_schema", LangChain's default
    assert isinstance(out, Contact) and out.age == 45
    raw = llm.with_structured_output(Contact, method="json_mode").invoke(PROMPT + " Answer in JSON.")
    assert isinstance(raw, Contact)


def test_instructor_json_schema_mode(smollm2_embedded: Service) -> None:
    import instructor

    client = instructor.from_openai(
        OpenAI(base_url=f"{smollm2_embedded.base_url}/v1", api_key="anything", max_retries=0),
        mode=instructor.Mode.JSON_SCHEMA,
    )
    out = client.chat.completions.create(
        model=SMOL,
        response_model=Contact,
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_retries=0,
    )
    assert isinstance(out, Contact) and out.age == 45


def test_litellm_response_format(smollm2_embedded: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price list (no internet here)
    import litellm

    reply = litellm.completion(
        model=f"openai/{SMOL}",
        api_base=f"{smollm2_embedded.base_url}/v1",
        api_key="anything",
        messages=[{"role": "user", "content": PROMPT}],
        response_format=Contact,
        temperature=0,
    )
    out = Contact.model_validate_json(reply.choices[0].message.content)
    assert out.age == 45
    schema_reply = litellm.completion(
        model=f"openai/{SMOL}",
        api_base=f"{smollm2_embedded.base_url}/v1",
        api_key="anything",
        messages=[{"role": "user", "content": PROMPT}],
        response_format={"type": "json_object"},
        temperature=0,
    )
    assert isinstance(json.loads(schema_reply.choices[0].message.content), dict)
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


def test_batch_lines_follow_their_response_format(client: OpenAI, tmp_path: Path) -> None:
    """The Batch API runs response_format exactly as HTTP does: valid JSON, and a refused schema is that
    line's 400 alone."""
    ticket = {"type": "json_schema", "json_schema": {"name": "Ticket", "schema": Ticket.model_json_schema()}}
    unique = {"type": "json_schema", "json_schema": {"name": "u", "schema": {"type": "array", "uniqueItems": True}}}
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i, body in enumerate(
            {"model": TINY, "messages": [{"role": "user", "content": f"t{i}"}], "max_tokens": 80, "response_format": f}
            for i, f in enumerate([ticket, ticket, unique])
        )
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    batch = client.batches.create(
        input_file_id=client.files.create(file=path.open("rb"), purpose="batch").id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + 300
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id and batch.error_file_id
    out = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert [r["custom_id"] for r in out] == ["c0", "c1"]
    for r in out:
        Ticket.model_validate_json(r["response"]["body"]["choices"][0]["message"]["content"])
    (err,) = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert err["custom_id"] == "c2" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "response_format"
