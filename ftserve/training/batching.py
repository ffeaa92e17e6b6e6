"""Group tokenized examples into optimizer steps and token-budget micro-batches (padded or packed)."""

from __future__ import annotations

import random
from collections.abc import Sized
from dataclasses import dataclass
from typing import TypeVar

import torch

from ftserve.training.tokenize import TokenizedExample

S = TypeVar("S", bound=Sized)


@dataclass
class MicroBatch:
    """Model inputs plus per-position loss weights (already aligned to the shifted targets)."""

    input_ids: torch.Tensor  # [rows, cols]
    attention_mask: torch.Tensor | None  # None for packed rows (position_ids mark the sequences)
    position_ids: torch.Tensor
    weights: torch.Tensor  # [rows, cols], weight of predicting input_ids[:, t] from position t-1
    completion: torch.Tensor  # [rows, cols] bool
    real_tokens: int  # non-padding tokens

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.numel())


def step_groups(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffle example indices for this epoch (seeded) and cut them into optimizer steps."""
    order = list(range(n_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]


def padded_microbatches(examples: list[TokenizedExample], pad_id: int, token_budget: int) -> list[MicroBatch]:
    """Sort by length and cut into right-padded micro-batches of at most token_budget padded tokens."""
    ordered = sorted(examples, key=len, reverse=True)
    sizes: list[int] = []
    i = 0
    while i < len(ordered):
        rows = min(max(1, token_budget // max(len(ordered[i]), 1)), len(ordered) - i)
        sizes.append(rows)
        i += rows
    return padded_groups(ordered, sizes, pad_id)


def padded_groups(ordered: list[TokenizedExample], sizes: list[int], pad_id: int) -> list[MicroBatch]:
    """Right-pad consecutive groups of `sizes` examples (sorted longest first) into micro-batches."""
    out: list[MicroBatch] = []
    i = 0
    for rows in sizes:
        chunk = ordered[i : i + rows]
        out.append(_pad(chunk, pad_id, max(len(e) for e in chunk)))
        i += rows
    return out


def _pad(chunk: list[TokenizedExample], pad_id: int, width: int) -> MicroBatch:
    n = len(chunk)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    weights = torch.zeros((n, width), dtype=torch.float32)
    completion = torch.zeros((n, width), dtype=torch.bool)
    for r, ex in enumerate(chunk):
        length = len(ex)
        ids[r, :length] = torch.tensor(ex.input_ids)
        mask[r, :length] = 1
        weights[r, :length] = torch.tensor(ex.weights)
        completion[r, :length] = torch.tensor(ex.completion)
    weights[:, 0] = 0.0  # nothing predicts the first token
    completion[:, 0] = False
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return MicroBatch(ids, mask, positions, weights, completion, int(mask.sum()))


def packed_microbatches(examples: list[TokenizedExample], token_budget: int) -> list[MicroBatch]:
    """Concatenate examples into single rows of at most token_budget tokens (or one longer example), no padding.

    position_ids restart at 0 for each example; transformers turns that into a block-diagonal causal
    mask (sdpa/eager) or varlen flash-attention, so no example attends to another.
    """
    return [pack(row) for row in pack_rows(sorted(examples, key=len, reverse=True), token_budget)]


def pack_rows(ordered: list[S], cap: int) -> list[list[S]]:
    """First-fit decreasing: put each example (longest first) into the first row it fits in under cap."""
    rows: list[list[S]] = []
    sizes: list[int] = []
    for ex in ordered:
        for r, size in enumerate(sizes):
            if size + len(ex) <= cap:
                rows[r].append(ex)
                sizes[r] += len(ex)
                break
        else:
            rows.append([ex])
            sizes.append(len(ex))
    return rows


def pack(chunk: list[TokenizedExample]) -> MicroBatch:
    """One row holding every example of chunk, positions restarting at each; seams carry no loss."""
    ids: list[int] = []
    pos: list[int] = []
    weights: list[float] = []
    completion: list[bool] = []
    for ex in chunk:
        ids.extend(ex.input_ids)
        pos.extend(range(len(ex)))
        # The first token of each packed example predicts nothing across the seam.
        weights.extend([0.0, *ex.weights[1:]])
        completion.extend([False, *ex.completion[1:]])
    return MicroBatch(
        torch.tensor([ids]),
        None,
        torch.tensor([pos]),
        torch.tensor([weights], dtype=torch.float32),
        torch.tensor([completion]),
        len(ids),
    )
