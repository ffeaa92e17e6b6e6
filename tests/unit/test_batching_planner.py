"""The per-step layout: the padded split is the cheapest one, and packing is chosen where padding would waste."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from ftserve.training.batching import padded_groups
from ftserve.training.planner import CostModel, best_padded_split, plan_step, split_step
from ftserve.training.tokenize import TokenizedExample

# SmolLM2-135M's shape, as CostModel.for_model computes it (checked in test_cost_model_from_shape); packed rows
# attended per example (ftserve_sdpa, flash attention) or through a row-wide mask (plain sdpa, eager).
COST = CostModel(pair=4.0 * 576 * 30 / (2 * 106e6), head=2.0 * 576 * 49152 / (2 * 106e6), varlen=True)
MASKED = dataclasses.replace(COST, varlen=False)


def _example(length: int, prompt: int) -> TokenizedExample:
    weights = [0.0] * prompt + [1.0] * (length - prompt)
    return TokenizedExample(list(range(length)), weights, [w > 0 for w in weights])


def _split_cost(lengths: list[int], firsts: list[int], sizes: list[int]) -> float:
    total, i = 0.0, 0
    for rows in sizes:
        total += COST.padded(rows, lengths[i], lengths[i] - min(firsts[i : i + rows]))
        i += rows
    return total


def test_padded_split_is_optimal_against_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 7)
        lengths = sorted((rng.randint(20, 600) for _ in range(n)), reverse=True)
        firsts = [rng.randint(1, length - 1) for length in lengths]
        budget = 2048
        sizes = best_padded_split(lengths, firsts, budget, COST)
        assert sum(sizes) == n
        best = min(
            _split_cost(lengths, firsts, list(comp))
            for comp in _compositions(n)
            if all(r == 1 or r * lengths[sum(comp[:k])] <= budget for k, r in enumerate(comp))
        )
        assert _split_cost(lengths, firsts, sizes) == pytest.approx(best)


def _compositions(n: int) -> list[tuple[int, ...]]:
    out = []
    for cuts in itertools.product([0, 1], repeat=n - 1):
        sizes, run = [], 1
        for c in cuts:
            if c:
                sizes.append(run)
                run = 1
            else:
                run += 1
        out.append((*sizes, run))
    return out


def test_spread_lengths_are_packed_and_equal_lengths_are_padded() -> None:
    spread = [_example(n, n // 2) for n in (600, 40, 35, 30, 25, 20, 60, 50)]
    plan = plan_step(spread, 0, 4096, COST, "auto", row_cap=1024)
    assert plan.packed and plan.padded_tokens == plan.real_tokens == sum(len(e) for e in spread)
    assert all(mb.input_ids.shape[1] <= 1024 for mb in plan.micro_batches)

    same = [_example(128, 100) for _ in range(8)]
    plan = plan_step(same, 0, 4096, COST, "auto", row_cap=1024)
    assert not plan.packed and plan.padded_tokens == plan.real_tokens


def test_per_example_attention_packs_a_step_into_one_row_and_a_mask_keeps_rows_short() -> None:
    """Attended per example, a packed row costs its examples' own pairs: the whole step is one call up to the
    budget. Under a row-wide mask the same row would cost its length squared: the long example stays apart."""
    step = [_example(n, n // 2) for n in (600, 450, 300, 40, 35, 30)]
    plan = plan_step(step, 0, 4096, COST, "auto", row_cap=4096)
    assert plan.packed and len(plan.micro_batches) == 1 and plan.real_tokens == sum(len(e) for e in step)
    masked = plan_step(step, 0, 4096, MASKED, "auto", row_cap=4096)
    assert len(masked.micro_batches) > 1
    assert COST.packed([600, 450], 0) < MASKED.packed([600, 450], 0)


def test_forced_modes_and_every_token_kept() -> None:
    examples = [_example(n, 5) for n in (300, 200, 100, 90, 12)]
    on = plan_step(examples, 0, 4096, COST, "on", row_cap=512)
    off = plan_step(examples, 0, 4096, COST, "off", row_cap=512)
    assert on.packed and not off.packed
    assert on.real_tokens == off.real_tokens == sum(len(e) for e in examples)
    assert all(mb.attention_mask is None for mb in on.micro_batches)
    assert all(mb.attention_mask is not None for mb in off.micro_batches)
    # An example longer than the row cap gets a row of its own rather than being cut.
    long = plan_step([_example(700, 5), _example(50, 5)], 0, 4096, COST, "on", row_cap=512)
    assert sorted(mb.real_tokens for mb in long.micro_batches) == [50, 700]


def test_padded_groups_pad_to_each_groups_longest() -> None:
    ordered = [_example(n, 1) for n in (10, 8, 3)]
    mbs = padded_groups(ordered, [2, 1], pad_id=0)
    assert [tuple(mb.input_ids.shape) for mb in mbs] == [(2, 10), (1, 3)]
    assert mbs[0].real_tokens == 18 and mbs[0].padded_tokens == 20


def test_cost_model_from_shape(bases_dir: object) -> None:
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from ftserve.core.config import Settings
    from ftserve.models.bases import base_path

    d = Path(str(bases_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_path(Settings(data_dir=d, bases_dir=d), "ftserve-tiny")))
    cost = CostModel.for_model(model)
    assert not cost.varlen  # loaded with plain sdpa: packed rows go through a block mask
    cfg = model.config
    layer_params = sum(p.numel() for p in model.model.layers.parameters()) + cfg.hidden_size  # + final norm
    assert cost.pair == pytest.approx(4 * cfg.hidden_size * cfg.num_hidden_layers / (2 * layer_params))
    assert cost.head == pytest.approx(2 * cfg.hidden_size * cfg.vocab_size / (2 * layer_params))


def test_a_step_is_dealt_to_ranks_whole_and_balanced_by_cost() -> None:
    rng = random.Random(3)
    step = [_example(rng.randint(8, 600), 4) for _ in range(13)]
    shares = split_step(step, 4, COST)
    assert sorted(id(e) for share in shares for e in share) == sorted(id(e) for e in step)  # each example once
    load = [sum(COST.packed([len(e)], len(e) - 4) for e in share) for share in shares]
    assert max(load) - min(load) <= max(COST.packed([len(e)], len(e) - 4) for e in step)  # within one example
    assert split_step(step, 4, COST) == shares  # every rank computes the same split
    assert [len(s) for s in split_step(step[:2], 3, COST)] == [1, 1, 0]  # fewer examples than ranks: some idle
