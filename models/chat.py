"""Chat rendering through the base's own template, in one place for training and serving alike."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase


def render_chat(
    tok: PreTrainedTokenizerBase,
    msgs: list[dict[str, Any]],
    add_generation_prompt: bool = False,
    tools: list[Any] | None = None,
) -> str:
    """The chat template's text for these messages (and OpenAI-style function tools, for templates that take them)."""
    text = tok.apply_chat_template(
        msgs, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(text, str)
    return text
