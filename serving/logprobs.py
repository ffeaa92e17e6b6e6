"""Logprobs of generated tokens in OpenAI's two shapes: legacy completions and chat completions."""

from __future__ import annotations

from typing import Any

from app.schemas.completions import ChatChoiceLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob
from engine.generation import Row


def completion_logprobs(
    tok: Any, row: Row, start: int = 0, end: int | None = None, offset: int = 0
) -> CompletionLogprobs:
    """Tokens [start:end], their logprobs, the top alternatives and each token's offset in the completion
    text (`offset`: where token `start` begins)."""
    end = len(row.token_logprobs) if end is None else end
    tokens = [tok.decode([t]) for t in row.token_ids[start:end]]
    offsets, pos = [], offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    top = [{tok.decode([k]): v for k, v in d.items()} for d in row.top_logprobs[start:end]]
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=list(row.token_logprobs[start:end]), top_logprobs=top, text_offset=offsets
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

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.sent = [0] * len(rows)
        self.offset = [0] * len(rows)

    def take(self, i: int) -> tuple[int, int]:
        """The token range [start, end) of choice i not yet sent, now marked sent."""
        row = self.rows[i]
        # token_logprobs grows before token_ids: count only tokens whose every list is filled.
        end = min(len(row.token_ids), len(row.token_logprobs), len(row.top_logprobs))
        start, self.sent[i] = self.sent[i], end
        return start, end

    def completion(self, tok: Any, i: int) -> CompletionLogprobs:
        start, end = self.take(i)
        lp = completion_logprobs(tok, self.rows[i], start, end, self.offset[i])
        self.offset[i] += sum(len(t) for t in lp.tokens)
        return lp

    def chat(self, tok: Any, i: int, top: int) -> ChatChoiceLogprobs:
        start, end = self.take(i)
        return chat_logprobs(tok, self.rows[i], top, start, end)
