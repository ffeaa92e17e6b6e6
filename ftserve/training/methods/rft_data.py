"""A reinforcement job's prompts as tokens: each line's conversation rendered through the base's chat template
up to the assistant's turn, with the line itself kept as the grader's item and its tools' names for reading
calls out of the sampled answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.datasets.formats import Prompt
from ftserve.core.datasets.validate import iter_examples
from ftserve.core.storage import Storage
from ftserve.models.chat import render_chat
from ftserve.models.tools import function_of
from ftserve.training.errors import TrainingError
from ftserve.training.tokenize import TokenizeStats


@dataclass(frozen=True)
class PromptItem:
    """One prompt to sample answers for: its tokens, the line (the grader's `item`) and its tools' names."""

    ids: list[int]
    item: dict[str, Any] = field(hash=False)
    tools: frozenset[str] = frozenset()
    line: int = 0


def load_prompts(
    settings: Settings, file_id: str, tok: PreTrainedTokenizerBase, max_len: int, max_completion: int
) -> tuple[list[PromptItem], TokenizeStats]:
    """Every prompt of the file; one whose tokens leave no room for `max_completion` more within `max_len` is
    dropped (counted), since cutting a prompt would change the question its grader scores."""
    stats = TokenizeStats()
    out: list[PromptItem] = []
    path = Storage(settings).local_file(file_id)
    room = max(1, max_len - max_completion)
    for line, _fmt, example in iter_examples(path, settings.max_line_bytes):
        if not isinstance(example, Prompt):  # job creation refuses other formats; this keeps the types honest
            raise TrainingError(
                "invalid_training_file", "reinforcement jobs train on prompts (lines ending with the user's turn)"
            )
        stats.examples += 1
        messages = [m.as_openai() for m in example.messages]
        tools = list(example.tools) or None
        text = render_chat(tok, messages, add_generation_prompt=True, tools=tools)
        ids = list(tok(text, add_special_tokens=False).input_ids)
        if len(ids) > room:
            stats.dropped += 1
            stats.dropped_lines.append(line)
            continue
        stats.tokens += len(ids)
        names = frozenset(str(function_of(t).get("name", "")) for t in example.tools)
        out.append(PromptItem(ids, example.item, names, line))
    return out, stats
