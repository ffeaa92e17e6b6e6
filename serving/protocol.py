"""Requests to generation: validate what the engine cannot serve (a 400 naming the parameter) and turn
each choice into a Row with its sampling parameters; usage and best_of on the way back."""

from __future__ import annotations

from app.errors import bad_request
from app.schemas.completions import ChatCompletionRequest, CompletionRequest, Usage
from engine.generation import Row
from engine.sampling import Sampling


def sampling(
    req: CompletionRequest | ChatCompletionRequest, max_tokens: int, logprobs: int | None, choice: int, vocab: int
) -> Sampling:
    """One choice's sampling parameters (choice i of a seeded request samples with seed + i)."""
    stops = req.stop_list()
    if len(stops) > 4:
        raise bad_request("At most 4 stop sequences are allowed", param="stop")
    bias = tuple(sorted((int(k), float(v)) for k, v in (req.logit_bias or {}).items()))
    unknown = [t for t, _ in bias if t >= vocab]
    if unknown:
        raise bad_request(f"logit_bias names token ids outside the model's vocabulary: {unknown}", param="logit_bias")
    seed = None if req.seed is None else req.seed + choice
    return Sampling(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=tuple(stops),
        seed=seed,
        logprobs=logprobs,
        logit_bias=bias,
        frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
    )


def check_length(prompt_len: int, max_tokens: int, limit: int) -> None:
    if prompt_len + max_tokens > limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens; the prompt has {prompt_len} tokens and "
            f"max_tokens is {max_tokens}",
            param="max_tokens",
            code="context_length_exceeded",
        )


def check_best_of(req: CompletionRequest) -> int:
    """How many candidates to generate per prompt (best_of, default n); 400 for what cannot be served."""
    if req.suffix:
        raise bad_request("suffix (text insertion) is not supported by these models", param="suffix")
    best_of = req.best_of or req.n
    if best_of < req.n:
        raise bad_request(f"best_of ({best_of}) must be at least n ({req.n})", param="best_of")
    if req.stream and best_of > req.n:
        raise bad_request("best_of larger than n cannot be streamed", param="best_of")
    return best_of


def best(rows: list[Row], best_of: int, n: int) -> list[Row]:
    """Per prompt, the n candidates with the highest mean logprob per sampled token (OpenAI's best_of)."""
    if best_of == n:
        return rows

    def score(row: Row) -> float:
        # Every sampled token counts, the end-of-text one included.
        sampled = row.token_logprobs + ([] if row.stop_logprob is None else [row.stop_logprob])
        return sum(sampled) / max(len(sampled), 1)

    groups = [rows[i : i + best_of] for i in range(0, len(rows), best_of)]
    return [row for group in groups for row in sorted(group, key=score, reverse=True)[:n]]


def usage(prompt_tokens: list[int], rows: list[Row]) -> Usage:
    p = sum(prompt_tokens)
    c = sum(len(r.token_ids) for r in rows)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)
