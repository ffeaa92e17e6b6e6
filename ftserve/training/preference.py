"""Preference pairs as tokens: the prompt once, then the preferred and the non-preferred reply, each
tokenized exactly as the chat template renders it and as inference would continue the prompt."""

from __future__ import annotations

from dataclasses import dataclass, replace

from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.datasets.formats import Chat, Message, Preference
from ftserve.core.datasets.validate import iter_examples
from ftserve.core.errors import TrainingError
from ftserve.core.storage import Storage
from ftserve.training.tokenize import TokenizeStats, chat_segments, encode_segments


@dataclass(frozen=True)
class PreferencePair:
    """Token ids of a prompt and of the two replies that follow it (each reply ends with its end-of-turn token)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    boundary_fixed: bool = False

    def __len__(self) -> int:
        """Tokens in the pair's packed row: the prompt once, then both replies."""
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def _reply(tok: PreTrainedTokenizerBase, ex: Preference, content: str) -> tuple[list[int], list[int], bool]:
    """(prompt ids, reply ids, boundary fixed): the conversation with one reply, split where the reply starts."""
    # Earlier assistant turns of the input are context, never trained (weight 0).
    messages = tuple(Message(m.role, m.content, 0 if m.role == "assistant" else 1) for m in ex.messages)
    chat = Chat((*messages, Message("assistant", content)), ex.tools, ex.parallel_tool_calls)
    segments = chat_segments(tok, chat, 0.0)
    encoded = encode_segments(tok, segments, add_special_tokens=False)
    trained = [t for t, c in enumerate(encoded.completion) if c]
    first, last = trained[0], trained[-1]
    return encoded.input_ids[:first], encoded.input_ids[first : last + 1], encoded.boundary_fixed


def tokenize_pair(tok: PreTrainedTokenizerBase, ex: Preference) -> PreferencePair:
    """The pair's tokens; tools are rendered by the chat template when it takes them, else in ftserve's own
    format (models/tools.py), so the model always sees them."""
    prompt, chosen, fixed_c = _reply(tok, ex, ex.preferred)
    prompt_r, rejected, fixed_r = _reply(tok, ex, ex.non_preferred)
    if prompt != prompt_r:  # both are the same prefix text tokenized whole, so this never differs
        raise TrainingError(
            "unsupported_chat_template", "The chat template renders the prompt differently for the two outputs", "model"
        )
    return PreferencePair(prompt, chosen, rejected, fixed_c or fixed_r)


def fit_pair(pair: PreferencePair, max_len: int) -> PreferencePair | None:
    """Keep prompt + reply within max_len tokens by cutting the replies' ends; None when the prompt leaves no room."""
    room = max_len - len(pair.prompt)
    if room < 1:
        return None
    if max(len(pair.chosen), len(pair.rejected)) <= room:
        return pair
    return replace(pair, chosen=pair.chosen[:room], rejected=pair.rejected[:room])


def load_pairs(
    settings: Settings, file_id: str, tok: PreTrainedTokenizerBase, max_len: int
) -> tuple[list[PreferencePair], TokenizeStats]:
    """Every pair of a preference file as tokens; over-long ones truncated or dropped (counted in the stats)."""
    stats = TokenizeStats()
    out: list[PreferencePair] = []
    for lineno, _fmt, example in iter_examples(Storage(settings).local_file(file_id), settings.max_line_bytes):
        if not isinstance(example, Preference):
            raise TrainingError("invalid_training_file", f"line {lineno}: not a preference example", "training_file")
        stats.examples += 1
        try:
            pair = tokenize_pair(tok, example)
        except TrainingError as err:
            raise TrainingError(err.code, f"line {lineno}: {err.message}", err.param) from None
        stats.boundary_fixed += int(pair.boundary_fixed)
        fitted = fit_pair(pair, max_len)
        if fitted is None:
            stats.dropped += 1
            stats.dropped_lines.append(lineno)
            continue
        stats.truncated += int(fitted is not pair)
        stats.tokens += len(fitted)
        out.append(fitted)
    return out, stats

