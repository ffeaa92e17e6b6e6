"""Tool calling against a real server with the official `openai` client: forced calls on ftserve-tiny (random
weights: only the grammar makes the arguments valid), streamed and whole replies agreeing, tool history, the
400s, and the client libraries people drive tools with (LangChain, instructor, litellm)."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from tests.e2e.conftest import client_for
from tests.servers import Service

# Base models only, no artifact kept: the S3 pass of `make test` would repeat it for nothing.
pytestmark = pytest.mark.local_storage

MODEL = "ftserve-tiny"
SMOL = "smollm2-135m-instruct"
# Bounded values (enums, integer ranges, maxLength): a random model under the grammar always closes them.
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "note": {"type": "string", "maxLength": 6},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CONVERT = {
    "type": "object",
    "properties": {
        "amount": {"type": "integer", "minimum": 1, "maximum": 100},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
    },
    "required": ["amount", "currency"],
    # Not closed by the schema itself: ftserve closes it (`strict` or not, as xgrammar does).
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "convert", "parameters": CONVERT, "strict": True}},
]
SCHEMAS = {"get_weather": WEATHER, "convert": {**CONVERT, "additionalProperties": False}}
ASK = [{"role": "user", "content": "Weather in Oslo for two days?"}]


@pytest.fixture(scope="module")
def client(smollm2_embedded: Service) -> OpenAI:
    # A shared CI machine can be slow: a generous timeout (nothing here waits on purpose).
    return client_for(smollm2_embedded, timeout=600)


def _valid(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_named_tool_choice_returns_schema_valid_arguments(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        n=4,
        temperature=1.0,
        seed=3,
        max_tokens=200,
    )
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = choice.message.tool_calls or []
        assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].type == "function"
        assert calls[0].function.name == "get_weather"
        _valid("get_weather", calls[0].function.arguments)


def test_required_calls_any_tool_once_unless_parallel(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        n=4,
        seed=0,
        max_tokens=200,
    )
    for choice in reply.choices:
        calls = choice.message.tool_calls or []
        assert choice.finish_reason == "tool_calls" and len(calls) == 1
        # `convert`'s schema leaves its object open: ftserve closes it, so a random model still ends it.
        _valid(calls[0].function.name, calls[0].function.arguments)
    # Parallel calls (the default): one or more, each valid, ids distinct.
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice="required",
        n=3,
        seed=1,
        max_tokens=250,
    )
    counts = []
    for choice in reply.choices:
        calls = choice.message.tool_calls or []
        if choice.finish_reason == "tool_calls":
            for call in calls:
                _valid(call.function.name, call.function.arguments)
            assert len({c.id for c in calls}) == len(calls)
        counts.append(len(calls))
    assert min(counts) >= 1  # how many is the model's choice (the unit tests see the grammar allow several)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "convert"}}])
def test_streamed_tool_calls_assemble_with_the_sdk_helpers_and_match_the_whole_reply(
    client: OpenAI, choice: Any
) -> None:
    args: dict[str, Any] = dict(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, seed=11, temperature=1.0, max_tokens=200
    )
    whole = client.chat.completions.create(**args)
    deltas: list[str] = []
    with client.chat.completions.stream(**args) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                deltas.append(event.arguments_delta)
        streamed = stream.get_final_completion()
    got, want = streamed.choices[0], whole.choices[0]
    assert got.finish_reason == want.finish_reason == "tool_calls"
    pairs = [(c.function.name, c.function.arguments) for c in got.message.tool_calls or []]
    assert pairs == [(c.function.name, c.function.arguments) for c in want.message.tool_calls or []]
    assert pairs and "".join(deltas) == "".join(a for _, a in pairs) and len(deltas) > len(pairs)
    for name, arguments in pairs:
        _valid(name, arguments)


def test_tool_history_is_rendered_and_none_never_returns_calls(client: OpenAI) -> None:
    history: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=8, seed=0
    )
    assert reply.choices[0].message.tool_calls is None and isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length")
    # The history is in the prompt: the tool list, the call and its result make it longer than the question.
    bare = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    assert reply.usage is not None and bare.usage is not None
    assert reply.usage.prompt_tokens > bare.usage.prompt_tokens + 50


def _error(client: OpenAI, **kw: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, max_tokens=4, **kw)
    body = err.value.body
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("kw", "param", "code"),
    [
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS},
            "tool_choice",
            "unknown_tool",
        ),
        ({"tool_choice": "required"}, "tool_choice", "invalid_tool_choice"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name", "duplicate_tool_name"),
        (
            {
                "tools": [
                    TOOLS[0],
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": True}},
                    },
                ],
                "tool_choice": "required",
            },
            "tools[1].function.parameters",
            None,
        ),
    ],
)
def test_bad_tool_settings_are_400s_naming_the_parameter(
    client: OpenAI, kw: dict[str, Any], param: str, code: str | None
) -> None:
    body = _error(client, messages=ASK, **kw)
    assert body["param"] == param and body["type"] == "invalid_request_error"
    if code is not None:
        assert body["code"] == code


def test_bad_tool_history_is_a_400_naming_the_message(client: OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    assistant = {"role": "assistant", "content": None, "tool_calls": [call]}
    cases = [
        (
            [*ASK, {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
            "messages[1].tool_call_id",
            "unknown_tool_call_id",
        ),
        ([*ASK, assistant, {"role": "tool", "content": "x"}], "messages[2].tool_call_id", "missing_tool_call_id"),
        (
            [*ASK, {**assistant, "tool_calls": [{**call, "function": {"name": "get_weather", "arguments": "{oops"}}]}],
            "messages[1].tool_calls[0].function.arguments",
            "invalid_tool_arguments",
        ),
        ([*ASK, {**assistant, "tool_calls": [call, call]}], "messages[1].tool_calls[1].id", "duplicate_tool_call_id"),
        ([*ASK, {"role": "function", "name": "f", "content": "x"}], "messages[1].role", "unsupported_message"),
    ]
    for messages, param, code in cases:
        body = _error(client, messages=messages, tools=TOOLS)
        assert (body["param"], body["code"]) == (param, code), body


# -- auto: the model chooses; SmolLM2 follows a few earlier calls in its history ----------------------------------


def _asked(city: str, i: int) -> list[Any]:
    call = {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'},
    }
    return [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]


def test_auto_parses_the_calls_the_model_writes_and_leaves_text_alone(client: OpenAI) -> None:
    weather = {**TOOLS[0], "function": {**TOOLS[0]["function"], "parameters": {"type": "object"}}}
    messages = [*_asked("Rome", 1), *_asked("Oslo", 2), {"role": "user", "content": "What is the weather in Paris?"}]
    args: dict[str, Any] = dict(model=SMOL, messages=messages, tools=[weather], temperature=0, max_tokens=40)
    whole = client.chat.completions.create(**args)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    with client.chat.completions.stream(**args) as stream:
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls or []] == [
        (c.function.name, c.function.arguments) for c in calls
    ]
    # A greeting is answered in text: auto returns no calls.
    hello = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Hello! How are you?"}],
        tools=[weather],
        temperature=0,
        max_tokens=10,
    )
    assert hello.choices[0].message.tool_calls is None and hello.choices[0].message.content
    assert hello.choices[0].finish_reason in ("stop", "length")


# -- client libraries, on the random model: only the grammar makes their arguments valid --------------------------


class Forecast(BaseModel):
    """The weather forecast for a city."""

    # No extra="forbid": the schema leaves additionalProperties out, as LangChain's and most callers' do, and
    # ftserve closes the object all the same (a random model would otherwise never stop inventing keys).

    city: Literal["Paris", "Oslo", "Lima"]
    days: int = Field(ge=1, le=7)


def test_langchain_bind_tools_with_tool_choice(smollm2_embedded: Service) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{smollm2_embedded.base_url}/v1",
        api_key="anything",
        max_retries=0,
        max_tokens=200,
        timeout=600,
    )
    for choice in ("Forecast", "any"):  # a named tool, and LangChain's "any" (OpenAI's "required")
        message = llm.bind_tools([Forecast], tool_choice=choice).invoke("Weather in Oslo for two days?")
        calls = message.tool_calls  # type: ignore[attr-defined]
        assert calls and {call["name"] for call in calls} == {"Forecast"}  # "any" may call it more than once
        for call in calls:
            assert set(call["args"]) <= set(Forecast.model_fields), call["args"]  # so Forecast(**args) works
            Forecast(**call["args"])


def test_instructor_tools_mode(smollm2_embedded: Service) -> None:
    import instructor

    client = instructor.from_openai(
        OpenAI(base_url=f"{smollm2_embedded.base_url}/v1", api_key="anything", max_retries=0, timeout=600),
        mode=instructor.Mode.TOOLS,
    )
    out = client.chat.completions.create(
        model=MODEL,
        response_model=Forecast,
        messages=[{"role": "user", "content": "Weather in Lima for a week?"}],
        max_tokens=200,
        max_retries=0,
    )
    assert isinstance(out, Forecast)


def test_litellm_tools(smollm2_embedded: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price list (no internet here)
    import litellm

    reply = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=f"{smollm2_embedded.base_url}/v1",
        api_key="anything",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
        timeout=600,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    _valid("get_weather", call.function.arguments)
