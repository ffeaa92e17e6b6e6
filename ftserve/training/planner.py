"""Choose, per optimizer step, how to lay its examples out: padded micro-batches or packed rows, by estimated cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ftserve.models.attention import VARLEN
from ftserve.training.batching import MicroBatch, pack, pack_rows, padded_groups
from ftserve.training.config import Packing, TrainingConfig
from ftserve.training.tokenize import TokenizedExample

# A forward/backward call costs about this many tokens' worth of work beyond its tokens (kernel launches,
# Python, small-matmul inefficiency); measured on SmolLM2 on CPU: a [1,128] call costs ~1.3x a row of [8,128].
CALL_OVERHEAD_TOKENS = 40.0
# On CPU, sdpa with the block-diagonal mask of a packed row grows quadratically and worse than FLOPs
# suggest past ~1k tokens, so packed rows are capped there unless the attention runs per sequence
# (models/attention: ftserve_sdpa, the training default, or flash attention's varlen kernel).
CPU_PACKED_ROW_TOKENS = 1024


@dataclass(frozen=True)
class CostModel:
    """Relative cost of a forward+backward, in units of one token through the transformer layers."""

    pair: float  # one attended (query, key) pair
    head: float  # one position through the LM head
    varlen: bool = False  # a packed row is attended per sequence (else through a mask over the whole row)

    def padded(self, rows: int, width: int, kept: int) -> float:
        # Right-padded rows run without a mask: the causal kernel computes the lower triangle only.
        pairs = rows * width * (width + 1) / 2
        return rows * width + pairs * self.pair + rows * kept * self.head + CALL_OVERHEAD_TOKENS

    def packed(self, lengths: Sequence[int], kept: int) -> float:
        length = sum(lengths)
        pairs = sum(n * (n + 1) / 2 for n in lengths) if self.varlen else length * length
        return length + pairs * self.pair + kept * self.head + CALL_OVERHEAD_TOKENS

    @classmethod
    def for_model(cls, model: nn.Module) -> CostModel:
        """From the model's shape: per-token layer FLOPs vs per-pair attention and per-position LM-head FLOPs;
        from its attention implementation, whether packed rows are attended per sequence."""
        cfg: Any = model.config
        hidden = int(cfg.hidden_size)
        layers = int(cfg.num_hidden_layers)
        vocab = int(cfg.vocab_size)
        embed = vocab * hidden
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        params = sum(p.numel() for p in model.parameters()) - embed * (1 if tied else 2)
        per_token = 2.0 * max(params, 1)
        varlen = getattr(cfg, "_attn_implementation", None) in VARLEN
        return cls(pair=4.0 * hidden * layers / per_token, head=2.0 * hidden * vocab / per_token, varlen=varlen)


@dataclass(frozen=True)
class Plan:
    """The micro-batches of one optimizer step and how they were laid out."""

    micro_batches: list[MicroBatch]
    packed: bool
    padded_tokens: int
    real_tokens: int


def _first_weighted(ex: TokenizedExample) -> int:
    """The first position (after 0) whose token carries loss."""
    return next((t for t, w in enumerate(ex.weights) if t and w > 0), len(ex))


def _kept(ex: TokenizedExample) -> int:
    """How many of the example's positions go through the LM head."""
    return sum(1 for t, w in enumerate(ex.weights) if t and w > 0)


def best_padded_split(lengths: list[int], firsts: list[int], budget: int, cost: CostModel) -> list[int]:
    """Cut examples sorted by length (descending) into contiguous groups of least total cost (exact DP).

    Returns the group sizes. A group pads to its first (longest) row, holds at most budget padded tokens
    (a single over-long row is allowed), and keeps logits for the union of its rows' weighted columns.
    """
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    choice = [0] * (n + 1)
    for j in range(1, n + 1):
        first = firsts[j - 1]
        for i in range(j - 1, -1, -1):
            rows, width = j - i, lengths[i]
            if rows > 1 and rows * width > budget:
                break
            first = min(first, firsts[i])
            c = best[i] + cost.padded(rows, width, max(width - first, 0))
            if c < best[j]:
                best[j], choice[j] = c, rows
    sizes: list[int] = []
    j = n
    while j:
        sizes.append(choice[j])
        j -= choice[j]
    return sizes[::-1]


def plan_step(
    examples: list[TokenizedExample],
    pad_id: int,
    budget: int,
    cost: CostModel,
    packing: Packing = "auto",
    row_cap: int | None = None,
) -> Plan:
    """The cheaper of the best padded split and packed rows (or the one `packing` forces)."""
    ordered = sorted(examples, key=len, reverse=True)
    cap = max(row_cap or budget, len(ordered[0]))
    if packing != "on":
        sizes = best_padded_split([len(e) for e in ordered], [_first_weighted(e) for e in ordered], budget, cost)
        padded = padded_groups(ordered, sizes, pad_id)
        padded_cost = sum(
            cost.padded(int(mb.input_ids.shape[0]), int(mb.input_ids.shape[1]), _kept_columns(mb)) for mb in padded
        )
    if packing != "off":
        rows = pack_rows(ordered, cap)
        packed_cost = sum(cost.packed([len(e) for e in row], sum(_kept(e) for e in row)) for row in rows)
    if packing == "on" or (packing == "auto" and packed_cost < padded_cost):
        mbs = [pack(row) for row in rows]
        return Plan(mbs, True, sum(mb.padded_tokens for mb in mbs), sum(mb.real_tokens for mb in mbs))
    return Plan(padded, False, sum(mb.padded_tokens for mb in padded), sum(mb.real_tokens for mb in padded))


def _kept_columns(mb: MicroBatch) -> int:
    """Columns of a padded micro-batch that go through the LM head (any row carries loss there)."""
    return int((mb.weights[:, 1:].sum(0) > 0).sum())


def packed_row_cap(config: TrainingConfig, device: torch.device, varlen: bool = False) -> int:
    """The longest packed row: the setting, else default_row_cap."""
    return config.packed_row_tokens or default_row_cap(config.batch_token_budget, device, varlen)


def default_row_cap(budget: int, device: torch.device, varlen: bool) -> int:
    """The token budget on GPU or where packed rows are attended per sequence (varlen), else (CPU under a
    row-wide mask) 1024 tokens."""
    return budget if device.type == "cuda" or varlen else CPU_PACKED_ROW_TOKENS


def split_step(examples: list[TokenizedExample], ranks: int, cost: CostModel) -> list[list[TokenizedExample]]:
    """A step's examples dealt to `ranks` processes of a gang by estimated cost (longest first, each to the
    rank with the least work so far): every rank computes the same split, and the union is the step."""
    shares: list[list[TokenizedExample]] = [[] for _ in range(ranks)]
    load = [0.0] * ranks
    for ex in sorted(examples, key=len, reverse=True):
        r = min(range(ranks), key=lambda i: (load[i], i))
        shares[r].append(ex)
        load[r] += cost.packed([len(ex)], _kept(ex))
    return shares


class Layout:
    """Lays out each step's examples as padded micro-batches or packed rows, whichever costs less."""

    def __init__(self, cost: CostModel, pad: int, budget: int, packing: Packing, row_cap: int) -> None:
        self.cost, self.pad, self.budget, self.packing, self.row_cap = cost, pad, budget, packing, row_cap

    @classmethod
    def for_run(cls, config: TrainingConfig, model: Any, pad: int, device: torch.device) -> Layout:
        """The layout for this job, model and device (packed rows capped at 1024 tokens on CPU under a mask)."""
        cost = CostModel.for_model(model.get_base_model())
        cap = packed_row_cap(config, device, cost.varlen)
        return cls(cost, pad, config.batch_token_budget, config.packing, cap)

    def plan(self, examples: list[TokenizedExample]) -> list[MicroBatch]:
        """Micro-batches for one step's examples (plan_step under the job's settings); none for none."""
        if not examples:
            return []
        return plan_step(examples, self.pad, self.budget, self.cost, self.packing, self.row_cap).micro_batches

    def plan_share(self, examples: list[TokenizedExample], rank: int, ranks: int) -> list[MicroBatch]:
        """Micro-batches for this rank's share of one step's examples (all of them outside a gang)."""
        if ranks == 1:
            return self.plan(examples)
        return self.plan(split_step(examples, ranks, self.cost)[rank])
