"""Logprobs in OpenAI's two shapes: legacy completions (prompt tokens too, with echo) and chat completions."""

from __future__ import annotations

from typing import Any

from ftserve.core.schemas.completions import ChatChoiceLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob
from ftserve.engine.generation import Row

Entry = tuple[int, float | None, dict[int, float] | None]  # token id, its logprob, the top alternatives


def generated(row: Row) -> list[Entry]:
    """The row's sampled tokens, and the end-of-text token that ended it (OpenAI lists that one too)."""
    # token_logprobs grows before token_ids (the batcher thread appends while a stream reads): count only
    # tokens whose every list is filled.
    n = min(len(row.token_ids), len(row.token_logprobs), len(row.top_logprobs))
    entries: list[Entry] = [(row.token_ids[i], row.token_logprobs[i], row.top_logprobs[i]) for i in range(n)]
    stop = row.stop_token
    if stop is not None and row.stop_top_logprobs is not None and n == len(row.token_ids):
        entries.append((stop, row.stop_logprob, row.stop_top_logprobs))
    return entries


def prompt_entries(row: Row) -> list[Entry]:
    """The prompt's tokens with their logprobs (echo): the first has none."""
    return list(zip(row.prompt_ids, row.prompt_token_logprobs, row.prompt_top_logprobs, strict=True))


def completion_logprobs(tok: Any, entries: list[Entry], offset: int) -> CompletionLogprobs:
    """Tokens, logprobs, top alternatives and each token's offset in the choice's text (`offset`: where the
    first entry begins: 0 for an echoed prompt, the prompt's length for generated tokens)."""
    tokens = [tok.decode([t]) for t, _, _ in entries]
    offsets, pos = [], offset
    for text in tokens:
        offsets.append(pos)
        pos += len(text)
    top = [None if alts is None else {tok.decode([k]): v for k, v in alts.items()} for _, _, alts in entries]
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=[lp for _, lp, _ in entries], top_logprobs=top, text_offset=offsets
    )


def choice_logprobs(tok: Any, row: Row, prompt_text: str, echo: bool) -> CompletionLogprobs:
    """A whole choice's logprobs: with echo, the prompt's tokens first."""
    lp = completion_logprobs(tok, generated(row), len(prompt_text))
    return _joined(completion_logprobs(tok, prompt_entries(row), 0), lp) if echo else lp


def _joined(head: CompletionLogprobs, tail: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=head.tokens + tail.tokens,
        token_logprobs=head.token_logprobs + tail.token_logprobs,
        top_logprobs=(head.top_logprobs or []) + (tail.top_logprobs or []),
        text_offset=head.text_offset + tail.text_offset,
    )


def chat_logprobs(tok: Any, row: Row, top: int, start: int = 0, end: int | None = None) -> ChatChoiceLogprobs:
    """Per generated token in [start:end]: its text, UTF-8 bytes, logprob and the `top` most likely alternatives."""

    def entry(token_id: int, logprob: float) -> TopLogprob:
        text = tok.decode([token_id])
        return TopLogprob(token=text, bytes=list(text.encode()), logprob=logprob)

    content = []
    picked = zip(row.token_ids[start:end], row.token_logprobs[start:end], row.top_logprobs[start:end], strict=False)
    for token_id, logprob, alts in picked:
        alternatives = [entry(t, v) for t, v in list(alts.items())[:top]]
        content.append(ChatTokenLogprob(**entry(token_id, logprob).model_dump(), top_logprobs=alternatives))
    return ChatChoiceLogprobs(content=content)


class StreamCursor:
    """Which tokens of each choice a stream has sent logprobs for: every chunk carries the tokens
    generated since the previous one (the scheduler thread appends while the event loop reads)."""

    def __init__(self, rows: list[Row], prompt_lens: list[int] | None = None) -> None:
        self.rows = rows
        self.sent = [0] * len(rows)
        self.echoed: set[int] = set()
        # Where each choice's generated text starts in prompt + completion (OpenAI's text_offset).
        self.offset = list(prompt_lens) if prompt_lens is not None else [0] * len(rows)

    def completion(self, tok: Any, i: int, echo: bool = False) -> CompletionLogprobs:
        """The logprobs of choice i's tokens not sent yet; with echo, its first chunk starts with the prompt's."""
        entries = generated(self.rows[i])
        start, self.sent[i] = self.sent[i], len(entries)
        lp = completion_logprobs(tok, entries[start:], self.offset[i])
        self.offset[i] += sum(len(t) for t in lp.tokens)
        if echo and i not in self.echoed:
            self.echoed.add(i)
            lp = _joined(completion_logprobs(tok, prompt_entries(self.rows[i]), 0), lp)
        return lp

    def chat(self, tok: Any, i: int, top: int) -> ChatChoiceLogprobs:
        row = self.rows[i]
        end = min(len(row.token_ids), len(row.token_logprobs), len(row.top_logprobs))
        start, self.sent[i] = self.sent[i], end
        return chat_logprobs(tok, row, top, start, end)
