"""OpenAI's function-calling training data checked line by line: declared tools (and legacy `functions`),
assistant tool calls (and legacy `function_call`), and the `tool` messages that answer them."""

from __future__ import annotations

import json
import re
from typing import Any

from ftserve.core.datasets.formats import DatasetError, ToolCall

# OpenAI's rule for function names; a name outside it is refused by OpenAI's API as well.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_tools(raw: Any, where: str, line: int) -> tuple[dict[str, Any], ...]:
    """OpenAI's function tools: [{"type": "function", "function": {"name", ...}}]; () when absent or empty."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise DatasetError("invalid_tools", f'"{where}" must be a list of function tools', line)
    names: set[str] = set()
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise DatasetError(
                "invalid_tools", f'{where}[{i}] must be {{"type": "function", "function": {{...}}}}', line
            )
        _check_function(fn, f"{where}[{i}].function", line, names)
    return tuple(raw)


def parse_functions(raw: Any, line: int) -> tuple[dict[str, Any], ...]:
    """Legacy `functions` ([{"name", "description", "parameters"}]) as the equivalent function tools."""
    if not isinstance(raw, list):
        raise DatasetError("invalid_tools", '"functions" must be a list of functions', line)
    names: set[str] = set()
    for i, fn in enumerate(raw):
        if not isinstance(fn, dict):
            raise DatasetError("invalid_tools", f"functions[{i}] must be an object", line)
        _check_function(fn, f"functions[{i}]", line, names)
    return tuple({"type": "function", "function": fn} for fn in raw)


def _check_function(fn: dict[str, Any], where: str, line: int, names: set[str]) -> None:
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise DatasetError("invalid_tools", f"{where}.name must be 1-64 letters, digits, underscores or dashes", line)
    if name in names:
        raise DatasetError("invalid_tools", f'{where}.name "{name}" is declared twice', line)
    names.add(name)
    if "description" in fn and not isinstance(fn["description"], str):
        raise DatasetError("invalid_tools", f"{where}.description must be a string", line)
    if "parameters" in fn and not isinstance(fn["parameters"], dict):
        raise DatasetError("invalid_tools", f"{where}.parameters must be an object (a JSON schema)", line)


def tool_names(tools: tuple[dict[str, Any], ...]) -> frozenset[str]:
    return frozenset(str(t["function"]["name"]) for t in tools)


def parse_tool_calls(raw: Any, where: str, line: int, declared: frozenset[str]) -> tuple[ToolCall, ...]:
    """An assistant message's `tool_calls`: each with an id, a declared function's name and JSON object arguments."""
    if not isinstance(raw, list) or not raw:
        raise DatasetError("invalid_tool_calls", f"{where}.tool_calls must be a non-empty list", line)
    calls: list[ToolCall] = []
    for j, call in enumerate(raw):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(fn, dict):
            raise DatasetError(
                "invalid_tool_calls",
                f'{at} must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}',
                line,
            )
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise DatasetError("invalid_tool_calls", f"{at}.id must be a non-empty string", line)
        calls.append(_call(call_id, fn, f"{at}.function", line, declared))
    return tuple(calls)


def parse_function_call(raw: Any, where: str, line: int, declared: frozenset[str], call_id: str) -> ToolCall:
    """A legacy `function_call` ({"name", "arguments"}) as a tool call with the given id."""
    if not isinstance(raw, dict):
        raise DatasetError("invalid_tool_calls", f'{where}.function_call must be {{"name", "arguments"}}', line)
    return _call(call_id, raw, f"{where}.function_call", line, declared)


def _call(call_id: str, fn: dict[str, Any], at: str, line: int, declared: frozenset[str]) -> ToolCall:
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise DatasetError("invalid_tool_calls", f"{at}.name must be a non-empty string", line)
    if name not in declared:
        known = ", ".join(sorted(declared)) or "none are declared"
        raise DatasetError("unknown_tool", f'{at}.name "{name}" is not a declared tool ({known})', line)
    arguments = fn.get("arguments")
    if not isinstance(arguments, str):
        raise DatasetError("invalid_tool_arguments", f"{at}.arguments must be a string holding a JSON object", line)
    try:
        value = json.loads(arguments)
    except ValueError:
        raise DatasetError("invalid_tool_arguments", f"{at}.arguments is not valid JSON", line) from None
    if not isinstance(value, dict):
        raise DatasetError("invalid_tool_arguments", f"{at}.arguments must be a JSON object", line)
    return ToolCall(call_id, name, arguments)


class CallLedger:
    """The calls made so far in one conversation: ids are unique, and each `tool` message answers an open one."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.open: dict[str, str] = {}  # call id -> function name, not yet answered
        self.seen: set[str] = set()

    def made(self, calls: tuple[ToolCall, ...], where: str) -> None:
        for call in calls:
            if call.id in self.seen:
                raise DatasetError(
                    "duplicate_tool_call_id", f'{where}: the tool call id "{call.id}" is used twice', self.line
                )
            self.seen.add(call.id)
            self.open[call.id] = call.name

    def answer(self, call_id: str, where: str) -> None:
        if call_id not in self.open:
            raise DatasetError(
                "unmatched_tool_message",
                f'{where}.tool_call_id "{call_id}" answers no earlier unanswered tool call',
                self.line,
            )
        del self.open[call_id]

    def answer_function(self, name: str, where: str) -> str:
        """A legacy `function` message answers the oldest open call of that function; its id is returned."""
        for call_id, called in self.open.items():
            if called == name:
                del self.open[call_id]
                return call_id
        raise DatasetError(
            "unmatched_tool_message", f'{where} answers no earlier unanswered call of "{name}"', self.line
        )
