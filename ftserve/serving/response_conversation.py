"""A response's conversation as chat messages, each message remembering the item it came from, so that a 400 the
chat plan raises about `messages[3].tool_calls[0].function.arguments` names the item as the SDK user wrote it
(`input[1].arguments`), the instructions, or the stored chain of `previous_response_id`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# A chat plan's param: a message, maybe one of its tool calls, then the rest of the path.
_CHAT_PARAM = re.compile(r"^messages\[(\d+)\](?:\.tool_calls\[(\d+)\])?(.*)$")
# Chat's fields of a tool call / a message as a Responses API item spells them.
_CALL_FIELDS = {".function.arguments": ".arguments", ".function.name": ".name", ".function": "", ".id": ".call_id"}
_MESSAGE_FIELDS = {".tool_call_id": ".call_id"}
# Chat's words for what the Responses API calls items.
_WORDS = (
    ("a tool call of an earlier assistant message", "a function_call item before it"),
    ("no tool call of an earlier assistant message", "no function_call item before it"),
    ("]: the id '", "].call_id '"),
)


@dataclass
class Conversation:
    """Chat messages (instructions first) and, per message, the conversation item it came from (None: the
    instructions) and the items its tool_calls came from; the first `history` items are the stored chain's."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    origins: list[int | None] = field(default_factory=list)
    calls: list[list[int]] = field(default_factory=list)
    history: int = 0

    def _add(self, message: dict[str, Any], origin: int | None) -> None:
        self.messages.append(message)
        self.origins.append(origin)
        self.calls.append([])

    def _item(self, k: int | None) -> str | None:
        """The item's param: `input[i]`; the instructions and the stored chain are named whole (None)."""
        return None if k is None or k < self.history else f"input[{k - self.history}]"

    def _whole(self, k: int | None) -> str:
        return "instructions" if k is None else "previous_response_id"

    def param(self, chat: str) -> str | None:
        """A chat plan's param (`messages[i]…`) as the request wrote it; None if it names no message."""
        m = _CHAT_PARAM.match(chat)
        if m is None or int(m.group(1)) >= len(self.messages):
            return None
        i, rest = int(m.group(1)), m.group(3)
        if m.group(2) is not None and int(m.group(2)) < len(self.calls[i]):
            k: int | None = self.calls[i][int(m.group(2))]
            renames = _CALL_FIELDS
        else:
            k, renames = self.origins[i], _MESSAGE_FIELDS
        item = self._item(k)
        if item is None:
            return self._whole(k)
        for chat_field, field_name in renames.items():
            if rest == chat_field or rest.startswith(chat_field + ".") or rest.startswith(chat_field + "["):
                return item + field_name + rest[len(chat_field) :]
        return item + rest

    def message(self, text: str, chat: str) -> str:
        """The chat plan's message with its param, and the call and message it names, renamed as param() does."""
        m = _CHAT_PARAM.match(chat)
        if m is None:
            return text
        call = f"messages[{m.group(1)}].tool_calls[{m.group(2)}]" if m.group(2) is not None else None
        for path in (chat, call, f"messages[{m.group(1)}]"):
            if path is not None:
                text = text.replace(path, self.param(path) or path)
        for words, ours in _WORDS:
            text = text.replace(words, ours)
        return text


def conversation(instructions: str | None, items: list[dict[str, Any]], history: int) -> Conversation:
    """The conversation as chat messages: instructions as the system message, a function_call joins the assistant
    message just before it (or starts one), a function_call_output is a `tool` message; `history` of the items are
    the stored chain's (the rest are this request's input)."""
    conv = Conversation(history=history)
    if instructions:
        conv._add({"role": "system", "content": instructions}, None)
    for k, item in enumerate(items):
        kind = item.get("type")
        if kind == "message":
            text = "".join(p.get("text") or "" for p in item.get("content", []))
            conv._add({"role": item["role"], "content": text}, k)
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = conv.messages[-1] if conv.messages else None
            if last is None or last["role"] != "assistant":
                conv._add({"role": "assistant", "content": None}, k)
                last = conv.messages[-1]
            last.setdefault("tool_calls", []).append(call)
            conv.calls[-1].append(k)
        elif kind == "function_call_output":
            conv._add({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}, k)
    return conv
