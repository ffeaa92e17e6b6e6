"""OpenAI's chat format: messages (system, user, assistant with optional tool calls, tool results), the
line's tools (or legacy functions) and per-message weights, checked with a stable code per problem."""

from __future__ import annotations

from typing import Any, Literal

from ftserve.core.datasets.formats import Chat, DatasetError, Message, ToolCall
from ftserve.core.datasets.tools import (
    CallLedger,
    parse_function_call,
    parse_functions,
    parse_tool_calls,
    parse_tools,
    tool_names,
)

CHAT_ROLES = ("system", "user", "assistant", "tool", "function")
# Which spelling of function calling a line uses: OpenAI's current one, the legacy one, or none declared.
Mode = Literal["tools", "functions"] | None
_LEGACY = {"function_call", "function"}  # the legacy message forms (a key, a role)
_CURRENT = {"tool_calls", "tool"}
_MIXED = (
    'a line uses either "tools" (tool_calls, tool messages) or the legacy "functions" (function_call, function '
    "messages), not both"
)


def parse_chat(obj: dict[str, Any], line: int) -> Chat:
    """Check one chat line and turn it into a Chat (legacy functions as tools), or raise DatasetError."""
    chat = parse_conversation(obj, line)
    if not any(m.role == "assistant" and m.weight == 1 for m in chat.messages):
        raise DatasetError(
            "no_assistant_message", "every example needs an assistant message to train on (weight 1)", line
        )
    return chat


def parse_conversation(obj: dict[str, Any], line: int) -> Chat:
    """A line's messages and tools checked as chat checks them, whatever turn it ends on (DatasetError if not)."""
    raw = obj["messages"]
    if not isinstance(raw, list) or not raw:
        raise DatasetError("invalid_messages", '"messages" must be a non-empty list', line)
    mode, tools = _declared(obj, line)
    parallel = obj.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise DatasetError("invalid_tools", '"parallel_tool_calls" must be true or false', line)
    declared = tool_names(tools)
    ledger = CallLedger(line)
    messages = [_message(msg, f"messages[{i}]", line, mode, declared, ledger) for i, msg in enumerate(raw)]
    if parallel is False:
        for i, m in enumerate(messages):
            if len(m.tool_calls) > 1:
                raise DatasetError(
                    "parallel_tool_calls_disabled",
                    f"messages[{i}] makes {len(m.tool_calls)} tool calls but the line sets parallel_tool_calls false",
                    line,
                )
    return Chat(tuple(messages), tools, parallel)


def _declared(obj: dict[str, Any], line: int) -> tuple[Mode, tuple[dict[str, Any], ...]]:
    has_tools, has_functions = obj.get("tools") is not None, obj.get("functions") is not None
    if has_tools and has_functions:
        raise DatasetError("functions_and_tools", f'{_MIXED}: this line has both "tools" and "functions"', line)
    if has_functions:
        return "functions", parse_functions(obj["functions"], line)
    if has_tools:
        return "tools", parse_tools(obj["tools"], "tools", line)
    return None, ()


def _message(msg: Any, where: str, line: int, mode: Mode, declared: frozenset[str], ledger: CallLedger) -> Message:
    if not isinstance(msg, dict):
        raise DatasetError("invalid_message", f"{where} must be an object", line)
    role = msg.get("role")
    if role not in CHAT_ROLES:
        raise DatasetError("invalid_role", f"{where}.role must be one of {', '.join(CHAT_ROLES)}", line)
    _same_mode(msg, role, where, line, mode)
    weight = msg.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise DatasetError("invalid_weight", f"{where}.weight must be 0 or 1", line)
    if role != "assistant" and "weight" in msg:
        raise DatasetError("invalid_weight", f"{where}.weight is only allowed on assistant messages", line)
    for key in ("tool_calls", "function_call"):
        if role != "assistant" and msg.get(key) is not None:
            raise DatasetError("invalid_tool_calls", f"{where}.{key} is only allowed on assistant messages", line)
    if role != "tool" and msg.get("tool_call_id") is not None:
        raise DatasetError("invalid_tool_message", f"{where}.tool_call_id is only allowed on tool messages", line)
    content = msg.get("content")
    if role == "assistant":
        calls = _calls(msg, where, line, declared, ledger)
        if content is None and calls:
            return Message("assistant", None, int(weight), calls)
        return Message(
            "assistant",
            _text(content, where, line, "a string, or null when the message makes tool calls"),
            int(weight),
            calls,
        )
    text = _text(content, where, line)
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise DatasetError(
                "invalid_tool_message", f"{where}.tool_call_id must be the id of the call it answers", line
            )
        ledger.answer(call_id, where)
        return Message("tool", text, tool_call_id=call_id)
    if role == "function":
        name = msg.get("name")
        if not isinstance(name, str) or not name:
            raise DatasetError(
                "invalid_tool_message", f"{where}.name must name the function whose result this is", line
            )
        return Message("tool", text, tool_call_id=ledger.answer_function(name, where))
    return Message(role, text)


def _same_mode(msg: dict[str, Any], role: str, where: str, line: int, mode: Mode) -> None:
    used = {k for k in ("tool_calls", "function_call") if msg.get(k) is not None} | ({role} & (_LEGACY | _CURRENT))
    if (
        (mode == "tools" and used & _LEGACY)
        or (mode == "functions" and used & _CURRENT)
        or (used & _LEGACY and used & _CURRENT)
    ):
        raise DatasetError("functions_and_tools", f"{where}: {_MIXED}", line)


def _calls(
    msg: dict[str, Any], where: str, line: int, declared: frozenset[str], ledger: CallLedger
) -> tuple[ToolCall, ...]:
    """The assistant message's calls (a legacy function_call gets the id call_<n>), recorded in the ledger."""
    raw = msg.get("tool_calls")
    if raw is not None and raw != []:
        calls = parse_tool_calls(raw, where, line, declared)
    elif msg.get("function_call") is not None:
        calls = (parse_function_call(msg["function_call"], where, line, declared, f"call_{len(ledger.seen)}"),)
    else:
        return ()
    ledger.made(calls, where)
    return calls


def _text(content: Any, where: str, line: int, allowed: str = "a string") -> str:
    if not isinstance(content, str):
        raise DatasetError("invalid_message", f"{where}.content must be {allowed}", line)
    return content
