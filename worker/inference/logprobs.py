"""Logprobs of generated tokens in OpenAI's two shapes: legacy completions and chat completions."""

from __future__ import annotations

from typing import Any

from app.schemas.completions import ChatChoiceLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob
from worker.inference.generation import Row


def completion_logprobs(tok: Any, row: Row) -> CompletionLogprobs:
    """Tokens, their logprobs, the top alternatives and each token's offset in the completion text."""
    tokens = [tok.decode([t]) for t in row.token_ids[: len(row.token_logprobs)]]
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    top = [{tok.decode([k]): v for k, v in d.items()} for d in row.top_logprobs]
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=list(row.token_logprobs), top_logprobs=top, text_offset=offsets
    )


def chat_logprobs(tok: Any, row: Row, top: int) -> ChatChoiceLogprobs:
    """Per generated token: its text, UTF-8 bytes, logprob and the `top` most likely alternatives."""

    def entry(token_id: int, logprob: float) -> TopLogprob:
        text = tok.decode([token_id])
        return TopLogprob(token=text, bytes=list(text.encode()), logprob=logprob)

    content = []
    for token_id, logprob, alts in zip(row.token_ids, row.token_logprobs, row.top_logprobs, strict=False):
        alternatives = [entry(t, v) for t, v in list(alts.items())[:top]]
        content.append(ChatTokenLogprob(**entry(token_id, logprob).model_dump(), top_logprobs=alternatives))
    return ChatChoiceLogprobs(content=content)
