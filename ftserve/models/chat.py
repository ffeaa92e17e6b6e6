"""Chat rendering through the base's own template, in one place for training and serving alike; tools and tool
calls go through the template when it takes them, else through ftserve's own format (models/tools.py)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from ftserve.models.tools import own_format, template_format, template_takes_tools


def render_chat(
    tok: PreTrainedTokenizerBase,
    msgs: list[dict[str, Any]],
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The chat template's text for these OpenAI-shaped messages (`content` may be null; assistant `tool_calls`
    with JSON `arguments` strings; `tool` messages with `tool_call_id`) and OpenAI function tools."""
    if template_takes_tools(tok):
        # transformers types `tools` as list[dict | Callable]; a list of dicts is one.
        specs: list[Any] | None = list(tools) if tools else None
        text = tok.apply_chat_template(
            template_format(msgs), tools=specs, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    else:
        text = tok.apply_chat_template(
            own_format(msgs, tools), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    assert isinstance(text, str)
    return text
