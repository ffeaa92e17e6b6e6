"""Logits shaping follows OpenAI's documented formulas for logit_bias and the two penalties."""

from __future__ import annotations

import torch

from ftserve.engine.sampling import Sampling, sample, shape_logits


def test_no_shaping_returns_the_same_logits() -> None:
    logits = torch.randn(10)
    assert shape_logits(logits, Sampling(), [1, 2]) is logits


def test_bias_and_penalties_match_openai_formula() -> None:
    logits = torch.zeros(6)
    s = Sampling(logit_bias=((1, 5.0), (4, -100.0)), frequency_penalty=0.5, presence_penalty=1.5)
    out = shape_logits(logits, s, [2, 2, 2, 3])
    # token 2 seen 3×: -(3 * 0.5 + 1.5); token 3 seen once: -(0.5 + 1.5)
    assert out.tolist() == [0.0, 5.0, -3.0, -2.0, -100.0, 0.0]
    assert logits.tolist() == [0.0] * 6  # the model's logits (used for logprobs) stay untouched


def test_negative_penalty_encourages_repetition_and_greedy_follows_the_shaped_logits() -> None:
    logits = torch.tensor([1.0, 0.9, 0.0])
    s = Sampling(temperature=0, presence_penalty=-2.0)
    assert sample(shape_logits(logits, s, [1]), s, None) == 1
    assert sample(shape_logits(logits, Sampling(temperature=0), [1]), s, None) == 0


def test_a_tiny_top_p_keeps_the_most_likely_token() -> None:
    """top_p=1e-50 rounds to 0 in float32: the nucleus must still hold the top token (it is then greedy)."""
    logits = torch.tensor([0.5, 3.0, 1.0, -2.0])
    gen = torch.Generator().manual_seed(0)
    assert {sample(logits, Sampling(temperature=1.0, top_p=1e-50), gen) for _ in range(20)} == {1}


def test_a_tiny_temperature_is_greedy_not_nan() -> None:
    logits = torch.tensor([0.5, 3.0, 1.0, -2.0])
    assert sample(logits, Sampling(temperature=1e-30), torch.Generator().manual_seed(0)) == 1


def test_draws_follow_the_distribution_and_never_pick_an_impossible_token() -> None:
    """The inverse-CDF draw: frequencies match softmax(logits) and a token of probability 0 is never drawn."""
    logits = torch.tensor([0.5, 3.0, 1.0, -2.0, float("-inf")])
    gen = torch.Generator().manual_seed(0)
    n = 5_000
    drawn = torch.tensor([sample(logits, Sampling(temperature=1.0), gen) for _ in range(n)])
    freq = torch.bincount(drawn, minlength=5).double() / n
    assert freq[4] == 0
    assert torch.allclose(freq[:4], torch.softmax(logits[:4].double(), -1), atol=0.02)
    again = torch.Generator().manual_seed(0)
    assert [sample(logits, Sampling(temperature=1.0), again) for _ in range(50)] == drawn[:50].tolist()
