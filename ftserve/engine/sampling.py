"""Per-request sampling: the parameters of one row, the logits adjustments they ask for, and the draw."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ftserve.engine.constraint import Constraint


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    # Logprobs of the prompt's own tokens (echo + logprobs): the prefill keeps every position's logits for
    # this row, and `logprobs` alternatives are reported per position.
    prompt_logprobs: bool = False
    # OpenAI's logit_bias (token id → bias added to its logit) and repetition penalties.
    logit_bias: tuple[tuple[int, float], ...] = ()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # Structured output: the grammar this row's tokens must follow (None = free text).
    constraint: Constraint | None = None

    @property
    def shapes_logits(self) -> bool:
        return bool(self.logit_bias) or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


def shape_logits(logits: torch.Tensor, s: Sampling, generated: list[int]) -> torch.Tensor:
    """The logits the draw uses: bias added, and OpenAI's penalties for tokens already generated.

    As OpenAI documents it: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty.
    Logprobs are reported from the model's own distribution, before this shaping (as vLLM does).
    """
    if not s.shapes_logits:
        return logits
    out = logits.float().clone()
    if s.logit_bias:
        ids = torch.tensor([t for t, _ in s.logit_bias], dtype=torch.long)
        out[ids] += torch.tensor([b for _, b in s.logit_bias], dtype=out.dtype)
    if generated and (s.frequency_penalty or s.presence_penalty):
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=out.shape[-1])[: out.shape[-1]]
        out -= counts.to(out.dtype) * s.frequency_penalty + (counts > 0).to(out.dtype) * s.presence_penalty
    return out


def sample(logits: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> int:
    """One token id from a row's logits: argmax at temperature 0, else temperature + nucleus sampling."""
    if s.temperature <= 0:
        return int(logits.argmax())
    # Subtract the max before dividing: a tiny temperature then sends the others to -inf, never to NaN.
    z = logits.float()
    probs = torch.softmax((z - z.max()) / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < s.top_p
        # The nucleus always holds the most likely token: a top_p like 1e-50 rounds to 0 in float32, and
        # an empty nucleus is no distribution at all.
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
    return _inverse_cdf(probs, gen)


def _inverse_cdf(probs: torch.Tensor, gen: torch.Generator | None) -> int:
    """A draw from `probs` (non-negative, not all zero) by one uniform number and the cumulative sums: exact, and
    a tenth of torch.multinomial's cost on a 49k vocabulary (which draws an exponential per token)."""
    cdf = probs.double().cumsum(0)
    u = torch.rand((), generator=gen, dtype=torch.float64) * cdf[-1]
    # right=True: the first token whose cumulative sum exceeds u, so a zero-probability token is never drawn
    token = int(torch.searchsorted(cdf, u.reshape(1), right=True))
    if token >= cdf.shape[0] or probs[token] <= 0:  # u rounded up to the total: the last token that can be drawn
        token = int(probs.nonzero()[-1])
    return token
