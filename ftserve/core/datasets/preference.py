"""OpenAI's preference (DPO) format: `input` (messages, optional tools) and one preferred and one
non-preferred assistant reply, checked with a stable code per problem."""

from __future__ import annotations

from typing import Any

from ftserve.core.datasets.formats import DatasetError, Message, Preference, parse_message
from ftserve.core.datasets.tools import parse_tools


def parse_preference(obj: dict[str, Any], line: int) -> Preference:
    """Check one preference line and turn it into a Preference, or raise DatasetError."""
    if "input" not in obj:
        raise DatasetError("missing_input", 'missing required key "input" (an object with "messages")', line)
    raw_input = obj["input"]
    if not isinstance(raw_input, dict):
        raise DatasetError("invalid_input", '"input" must be an object with "messages"', line)
    messages = _input_messages(raw_input.get("messages"), line)
    tools = parse_tools(raw_input.get("tools"), "input.tools", line)
    parallel = raw_input.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise DatasetError("invalid_tools", '"input.parallel_tool_calls" must be true or false', line)
    preferred = _output(obj, "preferred_output", line)
    non_preferred = _output(obj, "non_preferred_output", line)
    if preferred == non_preferred:
        raise DatasetError(
            "identical_outputs", '"preferred_output" and "non_preferred_output" are identical: nothing to prefer', line
        )
    return Preference(messages, preferred, non_preferred, tools, parallel)


def _input_messages(raw: Any, line: int) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise DatasetError("invalid_messages", '"input.messages" must be a non-empty list', line)
    messages: list[Message] = []
    for i, msg in enumerate(raw):
        where = f"input.messages[{i}]"
        _no_unsupported_keys(msg, where, line)
        role, content = parse_message(msg, where, line)
        messages.append(Message(role=role, content=content))
    if messages[-1].role != "user":
        raise DatasetError(
            "invalid_messages",
            '"input.messages" must end with a user message: the two outputs are the replies to it',
            line,
        )
    return tuple(messages)


def _output(obj: dict[str, Any], key: str, line: int) -> str:
    """The content of the one assistant message in `key` (OpenAI sends it as a one-element list)."""
    if key not in obj:
        raise DatasetError("missing_output", f'missing required key "{key}"', line)
    raw = obj[key]
    if not isinstance(raw, list) or not raw:
        raise DatasetError("invalid_output", f'"{key}" must be a list holding one assistant message', line)
    if len(raw) > 1:
        raise DatasetError(
            "too_many_output_messages", f'"{key}" has {len(raw)} messages; it must hold exactly one', line
        )
    where = f"{key}[0]"
    msg = raw[0]
    _no_unsupported_keys(msg, where, line)
    role, content = parse_message(msg, where, line)
    if role != "assistant":
        raise DatasetError("invalid_output_role", f"{where}.role must be assistant, not {role}", line)
    if not content:
        raise DatasetError("empty_output", f"{where}.content is empty: there is nothing to train on", line)
    return content


def _no_unsupported_keys(msg: Any, where: str, line: int) -> None:
    # Refused rather than ignored: a weight would silently change nothing, a tool call would be lost.
    if not isinstance(msg, dict):
        return  # parse_message names the problem
    if "weight" in msg:
        raise DatasetError("invalid_weight", f"{where}.weight is not used in preference examples", line)
    if msg.get("tool_calls") is not None:
        raise DatasetError("unsupported_tool_calls", f"{where}.tool_calls are not supported yet", line)
