"""The Responses API against a real server with the official `openai` client: create (string and item input),
parse with a json_schema, the stream helper's assembled text equal to the whole reply's, a function-tool round
trip through previous_response_id, the stored response (retrieve, input_items, delete), another org's id a 404,
store false, hosted tools refused by name. On ftserve-tiny (random weights: only the grammar shapes the output)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from tests.e2e.conftest import client_for
from tests.e2e.test_tenancy import _create_key
from tests.servers import Service, start_embedded

pytestmark = pytest.mark.local_storage

MODEL = "ftserve-tiny"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "name": "get_weather", "description": "Forecast", "parameters": WEATHER, "strict": True}


class Ticket(BaseModel):
    priority: Literal["low", "medium", "high"]
    count: int = Field(ge=1, le=9)
    done: bool


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[tuple[OpenAI, OpenAI]]:
    data = tmp_path_factory.mktemp("responses")
    alpha, beta = _create_key(data, bases_dir, "alpha"), _create_key(data, bases_dir, "beta")
    service: Service = start_embedded(data, bases_dir)
    yield client_for(service, api_key=alpha), client_for(service, api_key=beta)
    service.stop()


@pytest.fixture(scope="module")
def client(orgs: tuple[OpenAI, OpenAI]) -> OpenAI:
    return orgs[0]


def test_string_and_item_input(client: OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=8, temperature=0)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status == "incomplete" and r.incomplete_details and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.output_text == r.output[0].content[0].text
    assert r.usage and r.usage.output_tokens == 8 and r.usage.total_tokens == r.usage.input_tokens + 8
    assert r.usage.input_tokens_details.cached_tokens == 0 and r.usage.output_tokens_details.reasoning_tokens == 0
    items = client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]},
        ],
        max_output_tokens=4,
        temperature=0,
    )
    assert items.instructions == "Be brief." and items.output_text


def test_parse_with_a_json_schema(client: OpenAI) -> None:
    r = client.responses.parse(model=MODEL, input="A ticket", text_format=Ticket, max_output_tokens=80, temperature=0)
    assert r.status == "completed", r.output_text
    assert isinstance(r.output_parsed, Ticket)
    assert r.text.format.type == "json_schema"


def test_stream_assembles_the_greedy_text(client: OpenAI) -> None:
    whole = client.responses.create(model=MODEL, input="Tell me a story", max_output_tokens=24, temperature=0)
    types: list[str] = []
    with client.responses.stream(model=MODEL, input="Tell me a story", max_output_tokens=24, temperature=0) as s:
        for event in s:
            types.append(event.type)
        final = s.get_final_response() if "response.completed" in types else None
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert "response.output_text.delta" in types
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    done = [e for e in types if e == "response.output_text.done"]
    assert len(done) == 1
    # The raw stream too: numbered events, the text equal to the whole reply's.
    events = list(
        client.responses.create(model=MODEL, input="Tell me a story", max_output_tokens=24, temperature=0, stream=True)
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.output[0].content[0].text == whole.output_text  # type: ignore[union-attr]
    assert final is None
    # A completed stream: the helper's final response.
    with client.responses.stream(
        model=MODEL, input="A ticket", text_format=Ticket, max_output_tokens=80, temperature=0
    ) as s:
        parsed = s.get_final_response()
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Ticket)


def test_function_tool_round_trip(client: OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        input="Weather in Oslo?",
        tools=[TOOL],
        tool_choice="required",
        # The tiny base spells a call a character a token: wrapper, name and arguments take ~70; greedy, every
        # run makes the same call.
        max_output_tokens=160,
        temperature=0,
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    args = json.loads(calls[0].arguments)
    assert args["city"] in ("Paris", "Oslo", "Lima")
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp": 3}'}],
        tools=[TOOL],
        max_output_tokens=8,
    )
    assert second.previous_response_id == first.id
    assert second.output[0].type == "message" and second.output_text
    # Streamed, the call's arguments arrive as deltas and the final item carries them whole.
    with client.responses.stream(
        model=MODEL,
        input="Weather?",
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=200,
        temperature=0,
    ) as s:
        kinds = [e.type for e in s]
    assert kinds[-1] == "response.completed", kinds
    final = s.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    call = final.output[0]
    assert call.type == "function_call" and json.loads(call.arguments)["city"] in ("Paris", "Oslo", "Lima")


def test_stored_response_retrieve_input_items_delete(orgs: tuple[OpenAI, OpenAI]) -> None:
    client, other = orgs
    r = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
        max_output_tokens=4,
        metadata={"k": "v"},
    )
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.metadata == {"k": "v"}
    items = client.responses.input_items.list(r.id)
    assert [i.content[0].text for i in items.data] == ["two", "one"]  # type: ignore[union-attr]
    asc = client.responses.input_items.list(r.id, order="asc", limit=1)
    assert [i.content[0].text for i in asc.data] == ["one"] and asc.has_more  # type: ignore[union-attr]
    for call in (
        lambda: other.responses.retrieve(r.id),
        lambda: other.responses.delete(r.id),
        lambda: other.responses.input_items.list(r.id),
        lambda: other.responses.create(model=MODEL, input="hi", previous_response_id=r.id, max_output_tokens=2),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    # previous_response_id carries the conversation: its input and output come before the new input.
    follow = client.responses.create(model=MODEL, input="three", previous_response_id=r.id, max_output_tokens=2)
    assert [i.content[0].text for i in client.responses.input_items.list(follow.id).data] == ["three"]  # type: ignore[union-attr]
    assert follow.usage and r.usage and follow.usage.input_tokens > r.usage.input_tokens
    deleted = client.responses.delete(r.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_store_false_keeps_nothing(client: OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="secret", store=False, max_output_tokens=2)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model=MODEL, input="again", previous_response_id=r.id, max_output_tokens=2)
    assert exc.value.body["param"] == "previous_response_id"  # type: ignore[index]


@pytest.mark.parametrize("tool", [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}])
def test_hosted_tools_are_refused_by_name(client: OpenAI, tool: dict[str, object]) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model=MODEL, input="hi", tools=[tool])  # type: ignore[list-item]
    assert f"'{tool['type']}'" in exc.value.message and exc.value.body["param"] == "tools[0].type"  # type: ignore[index]


def test_reasoning_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model=MODEL, input="hi", reasoning={"effort": "high"})
    assert exc.value.body["param"] == "reasoning"  # type: ignore[index]
    ok = client.responses.create(model=MODEL, input="hi", reasoning={"effort": "none"}, max_output_tokens=1)
    assert ok.status == "incomplete"


def test_an_agents_sdk_agent_calls_its_tool_then_answers(client: OpenAI) -> None:
    """The OpenAI Agents SDK through OpenAIResponsesModel: the first turn is forced to call the tool (tool_choice
    required), the SDK resets tool_choice after it, and the second turn (the tool's output in its input) answers
    with the agent's output type (a bounded schema: the grammar closes it, so a random model finishes)."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from agents.items import ToolCallItem, ToolCallOutputItem
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    seen: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "Oslo", "Lima"]) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"It is sunny in {city}."

    aclient = AsyncOpenAI(base_url=str(client.base_url), api_key=client.api_key, max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=MODEL, openai_client=aclient),
        output_type=Ticket,
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=150),
    )
    result = Runner.run_sync(agent, "Weather in Oslo?", max_turns=3)
    assert len(seen) == 1 and seen[0] in ("Paris", "Oslo", "Lima")
    kinds = [type(i) for i in result.new_items]
    assert ToolCallItem in kinds and ToolCallOutputItem in kinds
    assert isinstance(result.final_output, Ticket)


def test_langchain_chat_openai_invoke_stream_and_bind_tools(client: OpenAI) -> None:
    """LangChain's ChatOpenAI(use_responses_api=True): invoke is the SDK's greedy reply, stream assembles the same
    text, bind_tools with a forced tool gives the call as tool_calls, and sending the call and a ToolMessage back
    (LangChain sends the whole conversation as items: function_call, function_call_output) gives a text answer."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    def chat(max_tokens: int) -> ChatOpenAI:
        return ChatOpenAI(
            model=MODEL,
            base_url=str(client.base_url),
            api_key=client.api_key,  # type: ignore[arg-type]
            use_responses_api=True,
            temperature=0,
            max_tokens=max_tokens,  # type: ignore[call-arg]
            max_retries=0,
        )

    sdk = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=8, temperature=0)
    reply = chat(8).invoke("Hello there")
    assert reply.text == sdk.output_text and reply.id and reply.id.startswith("resp_")
    assert reply.response_metadata["status"] == "incomplete" and reply.usage_metadata
    assert reply.usage_metadata["output_tokens"] == 8
    chunks = list(chat(8).stream("Hello there"))
    assert len(chunks) > 2 and "".join(c.text for c in chunks) == sdk.output_text

    tool = {"type": "function", "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER}}
    # The tiny base spells a call a character a token (see test_function_tool_round_trip): room for ~70.
    ask = HumanMessage("Weather in Oslo?")
    called = chat(160).bind_tools([tool], tool_choice="get_weather", strict=True).invoke([ask])
    assert len(called.tool_calls) == 1 and called.tool_calls[0]["name"] == "get_weather"  # type: ignore[attr-defined]
    call = called.tool_calls[0]  # type: ignore[attr-defined]
    assert call["args"]["city"] in ("Paris", "Oslo", "Lima") and 1 <= call["args"]["days"] <= 7
    assert call["id"] and call["id"].startswith("call_")
    answer = chat(8).bind_tools([tool]).invoke([ask, called, ToolMessage('{"temp": 3}', tool_call_id=call["id"])])
    assert not answer.tool_calls and answer.text  # type: ignore[attr-defined]


def test_a_concurrent_load_of_stored_streamed_and_chained_responses(client: OpenAI) -> None:
    """200 requests at once through AsyncOpenAI: 100 single responses (half streamed, a fifth with store false)
    beside 20 chains of 5 turns (previous_response_id; odd turns streamed). No error of any kind; every stored
    response is retrievable with its output; each turn links to its own chain's previous turn and lists its own
    input; and each chain's last turn continued exactly its own conversation: its input_tokens are those of the
    same conversation sent whole (each chain's inputs are of another length, so another chain's would not fit)."""
    import asyncio

    from openai import AsyncOpenAI
    from openai.types.responses import Response

    singles, chains, turns = 100, 20, 5
    assert singles + chains * turns == 200

    async def create(aclient: AsyncOpenAI, stream: bool, **kw: Any) -> Response:
        kw = {"model": MODEL, "max_output_tokens": 2, "temperature": 0, **kw}
        if not stream:
            return await aclient.responses.create(**kw)  # type: ignore[no-any-return]
        events = [e async for e in await aclient.responses.create(stream=True, **kw)]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].type in ("response.completed", "response.incomplete"), events[-1]
        return events[-1].response  # type: ignore[no-any-return]

    def words(k: int, t: int) -> str:
        return f"chain {k} turn {t}" + " again" * k

    async def chain(aclient: AsyncOpenAI, k: int) -> list[Response]:
        done: list[Response] = []
        for t in range(turns):
            previous = done[-1].id if done else None
            done.append(await create(aclient, t % 2 == 1, input=words(k, t), previous_response_id=previous))
        return done

    async def load() -> list[list[Any]]:
        aclient = AsyncOpenAI(base_url=str(client.base_url), api_key=client.api_key, max_retries=0, timeout=120)
        one = [create(aclient, i % 2 == 0, input=f"single {i}", store=i % 5 != 0) for i in range(singles)]
        many = [chain(aclient, k) for k in range(chains)]
        got = await asyncio.gather(
            asyncio.gather(*one, return_exceptions=True), asyncio.gather(*many, return_exceptions=True)
        )
        await aclient.close()
        return got

    one, many = asyncio.run(load())
    failures = [r for r in [*one, *many] if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    for i, r in enumerate(one):
        assert isinstance(r, Response) and r.store is (i % 5 != 0)
        if r.store:
            assert client.responses.retrieve(r.id).output == r.output
        else:
            with pytest.raises(openai.NotFoundError):
                client.responses.retrieve(r.id)
    for k, done in enumerate(many):
        assert isinstance(done, list) and len(done) == turns
        conversation: list[dict[str, object]] = []
        for t, r in enumerate(done):
            got = client.responses.retrieve(r.id)
            assert got.output == r.output and got.previous_response_id == (done[t - 1].id if t else None)
            assert [i.content[0].text for i in client.responses.input_items.list(r.id).data] == [words(k, t)]  # type: ignore[union-attr]
            conversation.append({"role": "user", "content": words(k, t)})
            if t < turns - 1:
                conversation += [{"role": "assistant", "content": r.output_text}]
        whole = client.responses.create(model=MODEL, input=conversation, store=False, max_output_tokens=1)  # type: ignore[arg-type]
        assert whole.usage and done[-1].usage and done[-1].usage.input_tokens == whole.usage.input_tokens, k


IMAGE = {"type": "input_image", "image_url": "x"}
OBJECT = {"type": "object"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"role": "user", "content": [IMAGE]}]}, "input[0].content[0].type"),
        ({"input": "hi", "background": True}, "background"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": OBJECT}}}, "text.format.name"),
        ({"input": "hi", "max_output_tokens": 100000}, "max_output_tokens"),
        ({"input": "hi", "tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "u", "schema": {"uniqueItems": True}}}},
         "text.format"),
    ],
)  # fmt: skip
def test_what_cannot_be_served_is_a_400_naming_it(client: OpenAI, body: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.post("/responses", body={"model": MODEL, **body}, cast_to=object)
    assert exc.value.body["param"] == param, exc.value.body  # type: ignore[index]


def test_input_items_pages_by_item_id(client: OpenAI) -> None:
    r = client.responses.create(
        model=MODEL, input=[{"role": "user", "content": str(i)} for i in range(5)], max_output_tokens=1
    )
    first = client.responses.input_items.list(r.id, order="asc", limit=2)
    assert [i.content[0].text for i in first.data] == ["0", "1"] and first.has_more  # type: ignore[union-attr]
    rest = [i.content[0].text for i in client.responses.input_items.list(r.id, order="asc")]  # type: ignore[union-attr]
    assert rest == ["0", "1", "2", "3", "4"]  # the SDK follows `after` (last_id) through the pages
    paged = [i.content[0].text for i in client.responses.input_items.list(r.id, order="asc", limit=2)]  # type: ignore[union-attr]
    assert paged == rest


USER = {"role": "user", "content": "hi"}
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([USER, USER, {"role": "user", "content": [{"type": "input_text", "text": 5}]}], "input[2].content[0].text"),
        ([{"role": "user", "content": [{"type": "input_text"}]}], "input[0].content[0].text"),
        ([{"role": "user", "content": [{"text": "hi"}]}], "input[0].content[0].type"),
        ([{"role": "user", "content": 5}], "input[0].content"),
        ([{"role": "robot", "content": "hi"}], "input[0].role"),
        ([{"role": "user"}], "input[0].content"),
        ([{"role": "user", "content": "hi", "colour": "red"}], "input[0].colour"),
        (["hi"], "input[0]"),
        ([{"type": "reasoning", "summary": []}], "input[0].type"),
        ([USER, {"type": "function_call_output", "output": "1"}], "input[1].call_id"),
        ([USER, {"type": "function_call_output", "call_id": "", "output": "1"}], "input[1].call_id"),
        ([USER, {"type": "function_call_output", "call_id": "call_1", "output": 1}], "input[1].output"),
        ([USER, {**CALL, "name": "get weather"}], "input[1].name"),
        ([USER, {**CALL, "arguments": {}}], "input[1].arguments"),
        ([USER, {**CALL, "status": "done"}], "input[1].status"),
        # What only the conversation shows: named at the item the chat plan's message came from.
        ([{"type": "function_call_output", "call_id": "call_x", "output": "1"}], "input[0].call_id"),
        ([USER, CALL, {"type": "function_call_output", "call_id": "call_2", "output": "1"}], "input[2].call_id"),
        ([USER, {"role": "assistant", "content": "ok"}, {**CALL, "arguments": "[]"}], "input[2].arguments"),
        ([USER, CALL, {**CALL, "name": "other"}], "input[2].call_id"),
    ],
)  # fmt: skip
def test_a_bad_input_item_is_a_400_naming_it_as_written(client: OpenAI, items: list[object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.post("/responses", body={"model": MODEL, "input": items, "max_output_tokens": 1}, cast_to=object)
    error = exc.value.body
    assert error["param"] == param and param in error["message"], error  # type: ignore[index]
