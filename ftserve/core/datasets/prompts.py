"""OpenAI's reinforcement fine-tuning lines: `messages` ending with the user's turn (no answer to train on),
optional `tools`, and any other top-level keys, which the grader reads as `item.*`."""

from __future__ import annotations

from typing import Any

from ftserve.core.datasets.chat import parse_conversation
from ftserve.core.datasets.formats import DatasetError, Prompt


def is_prompt_line(obj: dict[str, Any]) -> bool:
    """A `messages` line whose last message is the user's: a prompt to sample answers for, not a chat example."""
    messages = obj.get("messages")
    return (
        isinstance(messages, list)
        and bool(messages)
        and isinstance(messages[-1], dict)
        and messages[-1].get("role") == "user"
    )


def parse_prompt(obj: dict[str, Any], line: int) -> Prompt:
    """Check one reinforcement line and turn it into a Prompt (the whole line kept as the grader's item)."""
    if "messages" not in obj:
        raise DatasetError("missing_key", 'missing required key "messages"', line)
    chat = parse_conversation(obj, line)
    if chat.messages[-1].role != "user":
        raise DatasetError(
            "invalid_prompt",
            f"messages[{len(chat.messages) - 1}] is the {chat.messages[-1].role}'s: a reinforcement line ends with "
            "the user's turn (the model's answer is what training samples)",
            line,
        )
    return Prompt(chat.messages, chat.tools, chat.parallel_tool_calls, item=obj)
