"""Function tools in a chat: how tools and tool calls are rendered for a base, parsed from its output, and forced
by a grammar's source; the one module training and serving share for them (format in docs/tools.md).

A base whose chat template takes `tools` (Qwen2.5, Llama 3.1, Hermes, …) renders them through the template. A base
whose template does not (SmolLM2, ftserve-tiny, …) gets ftserve's own format, the Hermes/Qwen2.5 convention:

- the tools, one JSON object per line inside `<tools></tools>`, in a system section (appended to the first system
  message, or a system message of its own in front);
- an assistant call as `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>` after the message's text;
- tool results as one user turn holding a `<tool_response>\\n…\\n</tool_response>` block per result, so templates
  that only know system/user/assistant render them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# json.dumps' default separators: what rendering writes, what the grammar forces and what parsing reads back.
ITEM_SEPARATOR = ", "
KEY_SEPARATOR = ": "
_PROBE_NAME = "ftserve_probe_tool"
_takes_tools: dict[str, bool] = {}


@dataclass(frozen=True)
class ToolCall:
    """One function call: the function's name and its arguments as JSON text (an object)."""

    name: str
    arguments: str
    id: str = ""


def function_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The `function` object of an OpenAI tool ({"type": "function", "function": {...}})."""
    fn = tool.get("function")
    return fn if isinstance(fn, dict) else {}


def parameters_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The function's parameter schema; a function without one takes an empty object (as OpenAI's)."""
    params = function_of(tool).get("parameters")
    return params if isinstance(params, dict) else {"type": "object", "properties": {}}


def template_takes_tools(tok: PreTrainedTokenizerBase) -> bool:
    """Whether the base's chat template renders `tools` (a probe tool's name shows up in its output); cached."""
    template = tok.chat_template
    if not isinstance(template, str):
        return False
    if template not in _takes_tools:
        probe = {"type": "function", "function": {"name": _PROBE_NAME, "description": "probe", "parameters": {}}}
        try:
            text = tok.apply_chat_template(
                [{"role": "user", "content": "hi"}], tools=[probe], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # a template that chokes on tools does not take them
            text = ""
        _takes_tools[template] = isinstance(text, str) and _PROBE_NAME in text
    return _takes_tools[template]


def format_tool_call(name: str, arguments: str | dict[str, Any]) -> str:
    """One call in ftserve's format; arguments are re-serialised so equal calls always render alike."""
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def tools_system_text(tools: list[dict[str, Any]]) -> str:
    """The system section that lists the tools in ftserve's format: compact JSON (name, description,
    parameters), one per line, so small contexts hold them."""
    lines = []
    for tool in tools:
        fn = function_of(tool)
        spec: dict[str, Any] = {"name": fn.get("name", "")}
        if fn.get("description"):
            spec["description"] = fn["description"]
        spec["parameters"] = parameters_of(tool)
        lines.append(json.dumps(spec, ensure_ascii=False, separators=(",", ":")))
    return (
        "# Tools\nYou may call these functions:\n<tools>\n"
        + "\n".join(lines)
        + "\n</tools>\nTo call one, write "
        + f'{TOOL_CALL_OPEN}\n{{"name": <name>, "arguments": <object>}}\n{TOOL_CALL_CLOSE}'
    )


def _calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = message.get("tool_calls")
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def own_format(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI-shaped messages (assistant `tool_calls`, `tool` results) as plain system/user/assistant turns."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and _calls(m):
            blocks = [format_tool_call(c["function"]["name"], c["function"]["arguments"]) for c in _calls(m)]
            out.append({"role": "assistant", "content": "\n".join(([content] if content else []) + blocks)})
        elif role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
        else:
            out.append({"role": role, "content": content})
    for m in out:
        m.pop("tool_results", None)
    if tools:
        section = tools_system_text(tools)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{section}" if out[0]["content"] else section
        else:
            out.insert(0, {"role": "system", "content": section})
    return out


def template_format(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped messages as Hugging Face chat templates take them: call arguments as objects, a tool result
    with the name of the function it answers, null content as ""."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        if m["role"] == "assistant" and _calls(m):
            msg["tool_calls"] = []
            for c in _calls(m):
                fn = c["function"]
                args = fn["arguments"]
                call = {"type": "function", "function": {"name": fn["name"], "arguments": _as_object(args)}}
                if c.get("id"):
                    call["id"] = c["id"]
                    names[c["id"]] = fn["name"]
                msg["tool_calls"].append(call)
        elif m["role"] == "tool":
            msg["tool_call_id"] = m.get("tool_call_id", "")
            msg["name"] = names.get(msg["tool_call_id"], m.get("name") or "")
        out.append(msg)
    return out


def _as_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


def parse_tool_calls(text: str, names: set[str] | None = None) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) from a model's reply: `<tool_call>` blocks (ftserve's format, Hermes, Qwen2.5), or a reply
    that is only a JSON call or list of calls (Llama 3.1's `{"name": …, "parameters": …}`).

    A block that is not a call (bad JSON, no name, a name outside `names` when given) stays in the content; the
    content is the text around the calls, stripped, or None when nothing is left.
    """
    calls: list[ToolCall] = []
    kept: list[str] = []
    pos = 0
    for match in _BLOCK.finditer(text):
        call = _call_from_json(match.group(1), names)
        if call is None:
            continue
        kept.append(text[pos : match.start()])
        calls.append(call)
        pos = match.end()
    kept.append(text[pos:])
    if not calls:
        calls = _bare_calls(text, names)
        if calls:
            return None, calls
    content = "".join(kept).strip()
    return (content or None), calls


def _bare_calls(text: str, names: set[str] | None) -> list[ToolCall]:
    """A reply that is nothing but a JSON call, or a list of them (`<|python_tag|>` allowed in front)."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith(("{", "[")):
        return []
    try:
        value = json.loads(body)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    calls = [_call_from_value(v, names) for v in items]
    return [c for c in calls if c is not None] if items and all(c is not None for c in calls) else []


_CANONICAL = re.compile(r'\{\s*"name"\s*:\s*"[a-zA-Z0-9_-]*"\s*,\s*"arguments"\s*:\s*')


def _call_from_json(body: str, names: set[str] | None) -> ToolCall | None:
    try:
        call = _call_from_value(json.loads(body), names)
    except ValueError:
        return None
    # Arguments as the model wrote them when the block has the usual key order, so a streamed reply (sent as
    # it is generated) and the whole one agree to the byte.
    head = _CANONICAL.match(body)
    if call is not None and head is not None and body[head.end() :].startswith("{"):
        try:
            _, end = json.JSONDecoder().raw_decode(body, head.end())
        except ValueError:
            return call
        if body[end:].strip() == "}":
            return ToolCall(call.name, body[head.end() : end])
    return call


def _call_from_value(value: Any, names: set[str] | None) -> ToolCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict) or (names is not None and value["name"] not in names):
        return None
    return ToolCall(value["name"], json.dumps(args, ensure_ascii=False))


def tool_call_lark(tools: list[dict[str, Any]], name: str | None = None, parallel: bool = False) -> str:
    """A Lark grammar (llguidance's syntax; serving wraps it in a `lark` Constraint) that forces tool calls in
    ftserve's format with schema-valid arguments.

    `name`: exactly one call to that function (tool_choice naming a function); None: a call to any of the tools
    (tool_choice "required"), one or more of them when `parallel`. Arguments follow each function's parameter
    schema with json.dumps' separators and no other whitespace, so a reply renders back byte for byte.
    """
    chosen = [t for t in tools if name is None or function_of(t).get("name") == name]
    if not chosen:
        raise ValueError(f"no tool named {name!r}")
    options = []
    for tool in chosen:
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function_of(tool)["name"]}, "arguments": parameters_of(tool)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {
        "x-guidance": {
            "whitespace_flexible": False,
            # Regexes in llguidance; neither holds a regex metacharacter.
            "item_separator": ITEM_SEPARATOR,
            "key_separator": KEY_SEPARATOR,
        },
        **(options[0] if len(options) == 1 else {"anyOf": options}),
    }
    repeat = ' ("\\n" call)*' if parallel and name is None else ""
    source = (
        f"start: call{repeat}\n"
        f"call: {json.dumps(TOOL_CALL_OPEN + chr(10))} body {json.dumps(chr(10) + TOOL_CALL_CLOSE)}\n"
        f"body: %json {json.dumps(schema, ensure_ascii=False)}\n"
    )
    return source


_FORCED_HEAD = re.compile(re.escape(TOOL_CALL_OPEN + "\n") + r'\{"name": "([a-zA-Z0-9_-]+)", "arguments": ')
_FORCED_CLOSE = "}\n" + TOOL_CALL_CLOSE


def read_forced_calls(text: str, final: bool) -> list[tuple[str, str, bool]]:
    """(name, arguments so far, complete) per call in text that `tool_call_lark` forced, as it is generated.

    A call appears once its name is whole; until the text ends (`final`), the arguments hold back a tail that
    may be the start of the closing `}\n</tool_call>`, so what is read never shrinks as text is added. JSON
    strings hold no raw newline, so the closing text never occurs inside the arguments.
    """
    calls = []
    pos = 0
    while (head := _FORCED_HEAD.match(text, pos)) is not None:
        end = text.find(_FORCED_CLOSE, head.end())
        if end != -1:
            calls.append((head.group(1), text[head.end() : end], True))
            pos = end + len(_FORCED_CLOSE) + 1  # the newline between parallel calls
            continue
        args = text[head.end() :]
        held = next((n for n in range(len(_FORCED_CLOSE), 0, -1) if args.endswith(_FORCED_CLOSE[:n])), 0)
        # A call cut short (max_tokens) right after its arguments: the start of the closing text is not part of
        # them. Past the newline that is certain (forced JSON has no raw newline); a lone "}" is the call's own
        # only when the arguments are not whole JSON without it.
        if not final or held >= 2 or (held == 1 and _is_json(args[:-1]) and not _is_json(args)):
            args = args[: len(args) - held]
        calls.append((head.group(1), args, False))
        break
    return calls


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
