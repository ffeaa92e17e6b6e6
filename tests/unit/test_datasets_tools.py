"""Function-calling training lines (OpenAI's tools and legacy functions): each problem has a stable code and
its line; good lines parse into messages with tool calls and tool results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftserve.core.datasets.formats import Chat, DatasetError, Message, ToolCall
from ftserve.core.datasets.validate import iter_examples, validate_file

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CONVERT = {"type": "function", "function": {"name": "convert", "parameters": {"type": "object"}}}
USER = {"role": "user", "content": "Weather in Paris?"}


def call(id_: str = "call_1", name: str = "get_weather", arguments: object = '{"city": "Paris"}') -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def calls(*c: dict[str, Any], content: object = None, **extra: object) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(c), **extra}


def result(id_: str = "call_1", content: object = '{"temp": 21}') -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": id_, "content": content}


ANSWER = {"role": "assistant", "content": "It is 21 degrees in Paris."}


def line(*messages: dict[str, Any], tools: object = (WEATHER, CONVERT), **extra: object) -> str:
    row: dict[str, Any] = {"messages": list(messages), **extra}
    if tools is not None:
        row["tools"] = list(tools) if isinstance(tools, tuple) else tools
    return json.dumps(row)


GOOD = line(USER, calls(call()), result(), ANSWER)


def _check(tmp_path: Path, bad: str) -> DatasetError:
    path = tmp_path / "f.jsonl"
    path.write_text(GOOD + "\n" + bad + "\n")
    with pytest.raises(DatasetError) as err:
        validate_file(path, max_line_bytes=1 << 20, min_examples=1)
    return err.value


FN = {"name": "get_weather", "parameters": {"type": "object"}}
NO_ID = {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


def fcall(name: str = "get_weather", arguments: object = "{}") -> dict[str, Any]:
    """A legacy assistant message: one function_call (or a malformed one, given a string)."""
    fc = {"name": name, "arguments": arguments} if arguments is not None else name
    return {"role": "assistant", "content": None, "function_call": fc}


def legacy(*messages: dict[str, Any]) -> str:
    return line(*messages, tools=None, functions=[FN])


FRESULT = {"role": "function", "name": "get_weather", "content": "21"}


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        # declarations
        (line(USER, ANSWER, tools={"get_weather": {}}), "invalid_tools"),
        (line(USER, ANSWER, tools=({"type": "function"},)), "invalid_tools"),
        (line(USER, ANSWER, tools=({"type": "code_interpreter", "function": FN},)), "invalid_tools"),
        (line(USER, ANSWER, tools=({"type": "function", "function": {"name": "get weather"}},)), "invalid_tools"),
        (line(USER, ANSWER, tools=({"type": "function", "function": {"name": "x" * 65}},)), "invalid_tools"),
        (line(USER, ANSWER, tools=(WEATHER, WEATHER)), "invalid_tools"),
        (line(USER, ANSWER, tools=({"type": "function", "function": {**FN, "parameters": "{}"}},)), "invalid_tools"),
        (line(USER, ANSWER, tools=({"type": "function", "function": {**FN, "description": 3}},)), "invalid_tools"),
        (line(USER, ANSWER, functions=[FN]), "functions_and_tools"),
        (line(USER, ANSWER, tools=None, functions={"get_weather": FN}), "invalid_tools"),
        (line(USER, ANSWER, tools=None, functions=["get_weather"]), "invalid_tools"),
        (line(USER, ANSWER, parallel_tool_calls="yes"), "invalid_tools"),
        # tool calls
        (line(USER, calls(call(name="get_time"))), "unknown_tool"),
        (line(USER, calls(call()), tools=None), "unknown_tool"),
        (line(USER, calls(call(arguments="{city: Paris}"))), "invalid_tool_arguments"),
        (line(USER, calls(call(arguments='["Paris"]'))), "invalid_tool_arguments"),
        (line(USER, calls(call(arguments={"city": "Paris"}))), "invalid_tool_arguments"),
        (line(USER, calls(call(arguments=None))), "invalid_tool_arguments"),
        (line(USER, calls(call(), call())), "duplicate_tool_call_id"),
        (line(USER, calls(call()), result(), calls(call())), "duplicate_tool_call_id"),
        (line(USER, calls(NO_ID)), "invalid_tool_calls"),
        (line(USER, calls({**call(), "id": ""})), "invalid_tool_calls"),
        (line(USER, calls({**call(), "type": "code"})), "invalid_tool_calls"),
        (line(USER, calls({"id": "c", "type": "function"})), "invalid_tool_calls"),
        (line(USER, calls(call(name=""))), "invalid_tool_calls"),
        (line(USER, {"role": "assistant", "content": None, "tool_calls": "get_weather"}), "invalid_tool_calls"),
        (line(USER, {"role": "assistant", "content": None, "tool_calls": ["get_weather"]}), "invalid_tool_calls"),
        (line({**USER, "tool_calls": [call()]}, ANSWER), "invalid_tool_calls"),
        (line(USER, calls(call(), call("call_2")), parallel_tool_calls=False), "parallel_tool_calls_disabled"),
        # content
        (line(USER, {"role": "assistant", "content": None}), "invalid_message"),
        (line(USER, calls(call(), content=5)), "invalid_message"),
        (line(USER, calls(call()), result(content=None), ANSWER), "invalid_message"),
        (line(USER, calls(call()), result(content={"temp": 21}), ANSWER), "invalid_message"),
        # tool results
        (line(USER, calls(call()), result("call_9"), ANSWER), "unmatched_tool_message"),
        (line(USER, result(), ANSWER), "unmatched_tool_message"),
        (line(USER, calls(call()), result(), result(), ANSWER), "unmatched_tool_message"),
        (line(USER, calls(call()), {"role": "tool", "content": "21"}, ANSWER), "invalid_tool_message"),
        (line(USER, calls(call()), {**result(), "tool_call_id": 1}, ANSWER), "invalid_tool_message"),
        (line({**USER, "tool_call_id": "call_1"}, ANSWER), "invalid_tool_message"),
        (line(USER, calls(call()), {**result(), "weight": 1}, ANSWER), "invalid_weight"),
        (line(USER, calls(call(), weight=2)), "invalid_weight"),
        (line(USER, calls(call(), weight=0)), "no_assistant_message"),
        # the two spellings do not mix
        (line(USER, fcall()), "functions_and_tools"),
        (line(USER, calls(call()), FRESULT), "functions_and_tools"),
        (legacy(USER, calls(call())), "functions_and_tools"),
        (legacy(USER, result(), ANSWER), "functions_and_tools"),
        # legacy functions
        (legacy(USER, fcall("nope")), "unknown_tool"),
        (legacy(USER, fcall(arguments="[]")), "invalid_tool_arguments"),
        (legacy(USER, fcall(arguments=None)), "invalid_tool_calls"),
        (legacy(USER, FRESULT, ANSWER), "unmatched_tool_message"),
        (legacy(USER, fcall(), {"role": "function", "content": "21"}, ANSWER), "invalid_tool_message"),
    ],
)  # fmt: skip
def test_bad_tool_lines_have_code_and_line(tmp_path: Path, bad: str, code: str) -> None:
    err = _check(tmp_path, bad)
    assert (err.code, err.line) == (code, 2), err.message


def test_messages_name_the_message_and_the_tool(tmp_path: Path) -> None:
    err = _check(tmp_path, line(USER, calls(call(), call("call_2", name="get_time"))))
    assert "messages[1].tool_calls[1].function.name" in err.message and "get_weather" in err.message
    err = _check(tmp_path, line(USER, calls(call()), result("call_7"), ANSWER))
    assert "messages[2].tool_call_id" in err.message and "call_7" in err.message


def _parse(tmp_path: Path, text: str) -> Chat:
    path = tmp_path / "g.jsonl"
    path.write_text(text + "\n")
    assert validate_file(path, 1 << 20, 1).format == "chat"
    [(_, _, example)] = list(iter_examples(path, 1 << 20))
    assert isinstance(example, Chat)
    return example


def test_tool_calls_and_results_parse(tmp_path: Path) -> None:
    parallel = calls(call(), call("call_2", "convert", '{"amount": 3}'), content="Let me check.", weight=1)
    chat = _parse(tmp_path, line(USER, parallel, result(), result("call_2", "2.7"), ANSWER, parallel_tool_calls=True))
    assert chat.tools == (WEATHER, CONVERT) and chat.parallel_tool_calls is True
    assert chat.messages[1] == Message(
        "assistant",
        "Let me check.",
        tool_calls=(
            ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
            ToolCall("call_2", "convert", '{"amount": 3}'),
        ),
    )
    assert chat.messages[3] == Message("tool", "2.7", tool_call_id="call_2")
    # As OpenAI's chat API spells it, which is what the renderer gets in training and serving alike.
    assert chat.messages[1].as_openai()["tool_calls"][1] == call("call_2", "convert", '{"amount": 3}')
    assert chat.messages[2].as_openai() == result()
    # A conversation may end on the call (the example teaches the call), and a call's content may be null.
    ends_on_call = _parse(tmp_path, line(USER, calls(call())))
    assert ends_on_call.messages[-1].content is None and ends_on_call.messages[-1].as_openai()["content"] is None
    # A weight-0 call is context; a later turn is trained. tool_calls: [] is no call.
    chat = _parse(tmp_path, line(USER, calls(call(), weight=0), result(), {**ANSWER, "tool_calls": []}))
    assert chat.messages[1].weight == 0 and chat.messages[3].tool_calls == ()


def test_legacy_functions_become_tools(tmp_path: Path) -> None:
    fc = {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    fr = {"role": "function", "name": "get_weather", "content": "-3"}
    chat = _parse(tmp_path, line(USER, fc, fr, ANSWER, fc, fr, ANSWER, tools=None, functions=[FN]))
    assert chat.tools == ({"type": "function", "function": FN},)
    ids = [m.tool_calls[0].id for m in chat.messages if m.tool_calls]
    assert ids == ["call_0", "call_1"]
    assert [m.tool_call_id for m in chat.messages if m.role == "tool"] == ids
    assert chat.messages[1].tool_calls == (ToolCall("call_0", "get_weather", '{"city": "Oslo"}'),)
