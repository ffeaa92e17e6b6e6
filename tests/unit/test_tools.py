"""models/tools: tools and tool calls rendered (own format or the template's), parsed back, and forced by grammar."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import llguidance
import llguidance.hf
import pytest

from ftserve.models.chat import render_chat
from ftserve.models.tiny import build_tokenizer
from ftserve.models.tools import (
    ToolCall,
    format_tool_call,
    parse_tool_calls,
    template_takes_tools,
    tool_call_lark,
    tools_system_text,
)
from tests.family_models import LLAMA3_TEMPLATE, PHI3_TEMPLATE, TOOLS_CHATML

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "maxLength": 4},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
]
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo and the time?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo","days":2}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "content": "cold"},
    {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
    {"role": "assistant", "content": "Cold, and it is noon."},
]


def _tok(template: str | None = None) -> Any:
    tok = build_tokenizer()
    if template is not None:
        tok.chat_template = template
    return tok


def test_own_format_renders_tools_calls_and_results_through_a_plain_template() -> None:
    tok = _tok()
    assert not template_takes_tools(tok)
    text = render_chat(tok, CONVERSATION, tools=TOOLS)
    # The tools join the caller's system message; each call is a <tool_call> block; both results are one user turn.
    assert text.startswith("<|im_start|>system\nBe brief.\n\n" + tools_system_text(TOOLS) + "<|im_end|>\n")
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>\n'
    ) in text
    assert "<|im_start|>user\n<tool_response>\ncold\n</tool_response>\n<tool_response>\nnoon\n</tool_response>" in text
    # Without a system message, the tools get one of their own; without tools, nothing is added.
    assert render_chat(tok, CONVERSATION[1:2], tools=TOOLS).startswith("<|im_start|>system\n# Tools")
    assert render_chat(tok, CONVERSATION[1:2]) == "<|im_start|>user\nWeather in Oslo and the time?<|im_end|>\n"


@pytest.mark.parametrize("template", [None, TOOLS_CHATML], ids=["own-format", "template-takes-tools"])
def test_rendered_calls_parse_back_and_conversations_render_prefix_by_prefix(template: str | None) -> None:
    tok = _tok(template)
    full = render_chat(tok, CONVERSATION, tools=TOOLS)
    # What training needs: each assistant turn starts where the prompt before it (with generation prompt) ends.
    for i, m in enumerate(CONVERSATION):
        if m["role"] == "assistant":
            prefix = render_chat(tok, CONVERSATION[:i], add_generation_prompt=True, tools=TOOLS)
            assert full.startswith(prefix)
    # The assistant's calls, as rendered, parse back to the same calls (arguments as equal JSON).
    prompt = render_chat(tok, CONVERSATION[:2], add_generation_prompt=True, tools=TOOLS)
    reply = render_chat(tok, CONVERSATION[:3], tools=TOOLS)[len(prompt) :].removesuffix("<|im_end|>\n")
    content, calls = parse_tool_calls(reply, {"get_weather", "get_time"})
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo", "days": 2}),
        ("get_time", {}),
    ]


def test_template_detection_goes_by_what_the_template_renders() -> None:
    assert template_takes_tools(_tok(TOOLS_CHATML))
    for template in (None, LLAMA3_TEMPLATE, PHI3_TEMPLATE):
        assert not template_takes_tools(_tok(template))
    tok = _tok(TOOLS_CHATML)
    text = render_chat(tok, CONVERSATION[:2], add_generation_prompt=True, tools=TOOLS)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n") and "You may call" not in text


def test_parse_keeps_text_and_refuses_what_is_not_a_call() -> None:
    call = format_tool_call("get_time", "{}")
    assert parse_tool_calls("Let me check.\n" + call) == ("Let me check.", [ToolCall("get_time", "{}")])
    assert parse_tool_calls("Just text.") == ("Just text.", [])
    # Not JSON, no name, an undeclared name, a block cut off by max_tokens: all stay content.
    for bad in ("<tool_call>\n{oops}\n</tool_call>", '<tool_call>\n{"arguments": {}}\n</tool_call>'):
        assert parse_tool_calls(bad) == (bad, [])
    assert parse_tool_calls(call, {"get_weather"}) == (call, [])
    assert parse_tool_calls('<tool_call>\n{"name": "get_time", "argu') == (
        '<tool_call>\n{"name": "get_time", "argu',
        [],
    )
    # Llama 3.1's bare JSON call ("parameters"), and a list of them; arguments given as a JSON string.
    assert parse_tool_calls('{"name": "get_time", "parameters": {}}') == (None, [ToolCall("get_time", "{}")])
    assert parse_tool_calls('[{"name": "a", "arguments": "{\\"x\\": 1}"}]')[1] == [ToolCall("a", '{"x": 1}')]
    assert parse_tool_calls('{"answer": 42}') == ('{"answer": 42}', [])


def _sample(source: str, seed: int, max_tokens: int = 200) -> str:
    """Random tokens under the grammar's mask, as a random-weights model would pick them."""
    tok = _tok()
    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tok), llguidance.LLMatcher.grammar_from_lark(source))
    rnd = random.Random(seed)
    out: list[int] = []
    for _ in range(max_tokens):
        mask = matcher.compute_logit_bias()
        allowed = [t for t in range(len(tok)) if mask[t]]
        token = rnd.choice(allowed)
        if token == tok.eos_token_id:
            break
        assert matcher.consume_token(token), matcher.get_error()
        out.append(token)
        if matcher.is_stopped():
            break
    assert matcher.is_accepting()
    return str(tok.decode(out))


def test_grammar_forces_a_named_call_with_schema_valid_arguments() -> None:
    source = tool_call_lark(TOOLS, "get_weather", parallel=True)  # a named function is one call, parallel or not
    for seed in range(8):
        text = _sample(source, seed)
        content, calls = parse_tool_calls(text, {"get_weather", "get_time"})
        assert content is None and [c.name for c in calls] == ["get_weather"]
        jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
        # What the grammar forces is exactly what rendering writes: a trained reply and a forced one agree.
        assert text == format_tool_call("get_weather", calls[0].arguments)


def test_grammar_for_required_picks_any_tool_and_repeats_only_when_parallel() -> None:
    single, parallel = tool_call_lark(TOOLS), tool_call_lark(TOOLS, parallel=True)
    names: set[str] = set()
    counts: set[int] = set()
    for seed in range(12):
        _, calls = parse_tool_calls(_sample(single, seed))
        assert len(calls) == 1
        names.add(calls[0].name)
        _, many = parse_tool_calls(_sample(parallel, seed, max_tokens=400))
        counts.add(len(many))
        for call in calls + many:
            if call.name == "get_weather":
                jsonschema.validate(json.loads(call.arguments), WEATHER)
            else:
                assert call.arguments == "{}"
    assert names == {"get_weather", "get_time"} and max(counts) > 1
    with pytest.raises(ValueError):
        tool_call_lark(TOOLS, "missing")


def _streamed(plan: Any, text: str, finish: str) -> tuple[str | None, list[tuple[str, str]], str | None, int]:
    """Feed the text one character at a time and assemble the deltas as the SDK does."""
    from ftserve.serving.tools import ChoiceStream

    stream = ChoiceStream(plan)
    deltas = [d for ch in text for d in stream.feed(ch)]
    tail, reason = stream.finish(finish)
    content: str | None = None
    calls: list[list[str]] = []
    for d in (delta.model_dump(exclude_unset=True) for delta in deltas + tail):  # as the wire carries them
        if "content" in d:
            content = (content or "") + d["content"]
        for c in d.get("tool_calls", []):
            if c["index"] == len(calls):
                assert c["id"].startswith("call_") and c["type"] == "function"
                calls.append([c["function"]["name"], ""])
            calls[c["index"]][1] += c["function"]["arguments"]
    return content, [(n, a) for n, a in calls], reason, len(deltas)


@pytest.mark.parametrize(
    "text",
    [
        "Plain text, no call.",
        "  Let me check.\n\n" + format_tool_call("get_time", "{}") + "\n",
        format_tool_call("get_weather", '{"city": "Oslo", "days": 2}') + "\n" + format_tool_call("get_time", "{}"),
        "Maybe <tool_c but not a call.",
        "<tool_call>\n{broken}\n</tool_call> then text",
        '{"name": "get_time", "parameters": {}}',
        '{"answer": 1}',
        "Before " + format_tool_call("nope", "{}") + " after",
    ],
)
def test_auto_stream_assembles_to_the_whole_reply(text: str) -> None:
    from ftserve.models.tools import ToolCall as Call
    from ftserve.serving.tools import read_reply, tool_plan

    req = _chat_request({"tools": TOOLS})
    plan = tool_plan(req)
    content, calls, reason = read_reply(plan, text, "stop")
    streamed = _streamed(plan, text, "stop")
    assert streamed[:3] == (content, [(c.name, c.arguments) for c in calls], reason)
    if calls:
        assert reason == "tool_calls" and all(isinstance(c, Call) for c in calls)


def test_forced_stream_sends_arguments_as_they_come_and_agrees_when_cut_short() -> None:
    from ftserve.serving.tools import read_reply, tool_plan

    plan = tool_plan(_chat_request({"tools": TOOLS, "tool_choice": "required"}))
    assert plan is not None and plan.constraint is not None and plan.constraint.kind == "lark"
    text = format_tool_call("get_weather", '{"city": "Oslo", "days": 2}') + "\n" + format_tool_call("get_time", "{}")
    for cut, finish in ((len(text), "stop"), (70, "length"), (5, "length")):
        content, calls, reason = read_reply(plan, text[:cut], finish)
        streamed = _streamed(plan, text[:cut], finish)
        assert streamed[:3] == (content, [(c.name, c.arguments) for c in calls], reason)
    assert reason == "length" and calls == [] and content is None
    # Whole: two calls, arguments streamed in many pieces, finish_reason tool_calls.
    content, pairs, reason, pieces = _streamed(plan, text, "stop")
    assert pairs == [("get_weather", '{"city": "Oslo", "days": 2}'), ("get_time", "{}")] and reason == "tool_calls"
    assert content is None and pieces > 10


def _chat_request(extra: dict[str, Any]) -> Any:
    from ftserve.core.schemas.completions import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


def test_a_forced_call_cut_short_after_its_arguments_keeps_only_them() -> None:
    """max_tokens ending inside the closing text: the arguments are the JSON object, streamed or not."""
    from ftserve.serving.tools import read_reply, tool_plan

    plan = tool_plan(_chat_request({"tools": TOOLS, "tool_choice": "required"}))
    assert plan is not None
    whole = format_tool_call("get_weather", '{"city": "Oslo", "days": 2}')
    args_end = whole.index('"days": 2}') + len('"days": 2}')
    for cut in range(args_end - 1, len(whole)):
        content, calls, reason = read_reply(plan, whole[:cut], "length")
        streamed = _streamed(plan, whole[:cut], "length")
        assert streamed[:3] == (content, [(c.name, c.arguments) for c in calls], reason)
        expected = '{"city": "Oslo", "days": 2' if cut == args_end - 1 else '{"city": "Oslo", "days": 2}'
        assert [c.arguments for c in calls] == [expected], cut
