"""The JSONL example formats ftserve trains on (prompt/completion, chat, preference), parsed from one decoded
JSON line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Format = Literal["prompt_completion", "chat", "preference", "prompts"]
ROLES = ("system", "user", "assistant")


class DatasetError(Exception):
    """A bad example: a stable code, a human message and the 1-based line it is on."""

    def __init__(self, code: str, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line

    def describe(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.message}"


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant message makes; `arguments` is the JSON object's text as sent."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    role: str
    # None only on an assistant message that makes tool calls (OpenAI's null content).
    content: str | None
    # OpenAI's per-message weight: 0 excludes an assistant message from the loss.
    weight: int = 1
    tool_calls: tuple[ToolCall, ...] = ()
    # On a `tool` message: the id of the call it answers.
    tool_call_id: str | None = None

    def as_openai(self) -> dict[str, Any]:
        """The message as OpenAI's chat API spells it (what the chat renderer takes, in training and serving)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class PromptCompletion:
    prompt: str
    completion: str


@dataclass(frozen=True)
class Chat:
    messages: tuple[Message, ...]
    # OpenAI's function tools (legacy `functions` converted to them), as sent; () when none.
    tools: tuple[dict[str, Any], ...] = ()
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True)
class Preference:
    """A preference pair (OpenAI's DPO format): a conversation and two candidate assistant replies to it."""

    messages: tuple[Message, ...]
    preferred: str
    non_preferred: str
    # OpenAI's function tools, as sent (rendered by chat templates that take `tools`); () when none.
    tools: tuple[dict[str, Any], ...] = ()
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True)
class Prompt:
    """A reinforcement fine-tuning line (OpenAI's RFT format): a conversation ending with the user's turn, its
    tools, and the whole line as the grader's `item` (its other keys are the references graders read)."""

    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] = ()
    parallel_tool_calls: bool | None = None
    item: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


Example = PromptCompletion | Chat | Preference | Prompt
PREFERENCE_KEYS = ("preferred_output", "non_preferred_output")
# The top-level keys each format's reader takes (OpenAI's training formats); a line's other keys are ignored,
# as OpenAI ignores them, and reported in the file's status_details (datasets/validate.UnknownKeys).
KNOWN_KEYS: dict[Format, frozenset[str]] = {
    "prompt_completion": frozenset({"prompt", "completion"}),
    "chat": frozenset({"messages", "tools", "parallel_tool_calls", "functions"}),
    "preference": frozenset({"input", *PREFERENCE_KEYS}),
    "prompts": frozenset(),  # every key of a reinforcement line is the grader's to read (item.*)
}
# A preference line's `input`: the conversation the two outputs answer, with its tools.
PREFERENCE_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})


def detect_format(obj: dict[str, Any]) -> Format | None:
    if any(k in obj for k in PREFERENCE_KEYS) or isinstance(obj.get("input"), dict):
        return "preference"
    if "messages" in obj:
        from ftserve.core.datasets.prompts import is_prompt_line

        return "prompts" if is_prompt_line(obj) else "chat"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    return None


def parse_example(obj: Any, line: int, expected: Format | None = None) -> tuple[Format, Example]:
    """Check one decoded JSON value and turn it into an Example, or raise DatasetError. `expected`: the format the
    file's earlier lines are in; a `messages` line is read as that one (chat or prompts), so a chat file's line
    without an answer is refused as one, not as a change of format."""
    if not isinstance(obj, dict):
        raise DatasetError("invalid_example", f"expected a JSON object, got {type(obj).__name__}", line)
    fmt = detect_format(obj)
    if fmt in ("chat", "prompts") and expected in ("chat", "prompts"):
        fmt = expected
    if fmt == "chat":
        # Imported here, like the preference parser: both build on this module's types and message checks.
        from ftserve.core.datasets.chat import parse_chat

        return fmt, parse_chat(obj, line)
    if fmt == "prompt_completion":
        return fmt, parse_prompt_completion(obj, line)
    if fmt == "preference":
        from ftserve.core.datasets.preference import parse_preference

        return fmt, parse_preference(obj, line)
    if fmt == "prompts":
        from ftserve.core.datasets.prompts import parse_prompt

        return fmt, parse_prompt(obj, line)
    raise DatasetError(
        "unknown_format",
        'each line needs "prompt" and "completion", "messages", or "input" with "preferred_output" and '
        '"non_preferred_output"; found keys ' + ", ".join(sorted(map(str, obj)))[:200],
        line,
    )


def parse_prompt_completion(obj: dict[str, Any], line: int) -> PromptCompletion:
    """Check one prompt/completion line and turn it into a PromptCompletion, or raise DatasetError."""
    for key in ("prompt", "completion"):
        if key not in obj:
            raise DatasetError("missing_key", f'missing required key "{key}"', line)
        if not isinstance(obj[key], str):
            raise DatasetError("invalid_type", f'"{key}" must be a string', line)
    if not obj["completion"]:
        raise DatasetError("empty_completion", '"completion" is empty: there is nothing to train on', line)
    return PromptCompletion(prompt=obj["prompt"], completion=obj["completion"])


def parse_message(msg: Any, where: str, line: int, roles: tuple[str, ...] = ROLES) -> tuple[str, str]:
    """A chat message's (role, content): an object with a known role and string content, or DatasetError."""
    if not isinstance(msg, dict):
        raise DatasetError("invalid_message", f"{where} must be an object", line)
    role = msg.get("role")
    if role not in roles:
        raise DatasetError("invalid_role", f"{where}.role must be one of {', '.join(roles)}", line)
    content = msg.get("content")
    if not isinstance(content, str):
        raise DatasetError("invalid_message", f"{where}.content must be a string", line)
    return role, content
