"""Preference pairs packed into rows that run each prompt once for both replies, and the replies' log-probs.

A pair becomes the span [prompt, chosen, rejected] of a row. The chosen tokens see the prompt and the
earlier chosen tokens; the rejected tokens see the prompt and the earlier rejected tokens, never the
chosen ones; both replies continue the prompt's positions (position_ids restart at len(prompt)). Each
token therefore gets exactly the hidden states it gets in its own [prompt, reply] sequence, while the
prompt is computed once instead of twice. Pairs never see each other (a block-diagonal 4-D mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ftserve.training.batching import pack_rows
from ftserve.training.preference import PreferencePair


@dataclass(frozen=True)
class _Slot:
    index: int
    pair: PreferencePair

    def __len__(self) -> int:
        return len(self.pair)


@dataclass
class DpoRow:
    """One packed row of pairs and, for every reply token, which kept position predicts it."""

    input_ids: torch.Tensor  # [1, L]
    position_ids: torch.Tensor  # [1, L]
    spans: list[tuple[int, int, int, int]]  # per pair: (start, prompt, chosen, rejected lengths)
    keep: torch.Tensor  # [K] the positions whose logits are needed
    at: torch.Tensor  # [T] for each reply token, its predicting position (an index into keep)
    target: torch.Tensor  # [T] the reply token
    owner: torch.Tensor  # [T] 2 * (pair's slot in the row) + 0 for chosen, 1 for rejected
    pairs: list[int]  # the pairs in the row (indices into the caller's list), in slot order

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def allowed(self) -> torch.Tensor:
        """[L, L] bool, query i may attend to key j (built per forward: L² is too much to keep for every row)."""
        allowed = torch.zeros((self.tokens, self.tokens), dtype=torch.bool)
        for start, p, c, r in self.spans:
            n = p + c + r
            block = torch.ones((n, n), dtype=torch.bool).tril_()
            block[p + c :, p : p + c] = False  # the rejected reply never sees the chosen one
            allowed[start : start + n, start : start + n] = block
        return allowed


@dataclass
class RowLogps:
    """Summed reply log-probs per pair of a row, and greedy accuracy on the chosen tokens."""

    chosen: torch.Tensor  # [pairs]
    rejected: torch.Tensor  # [pairs]
    correct: int
    chosen_tokens: int


def build_rows(pairs: list[PreferencePair], indices: list[int], cap: int) -> list[DpoRow]:
    """Pack the chosen pairs into rows of at most cap tokens (longest first; a longer pair gets its own row)."""
    slots = sorted((_Slot(i, pairs[i]) for i in indices), key=len, reverse=True)
    return [_row(row) for row in pack_rows(slots, max(cap, len(slots[0]) if slots else 0))]


def _row(slots: list[_Slot]) -> DpoRow:
    ids: list[int] = []
    positions: list[int] = []
    predictors: list[int] = []  # per reply token: the row position whose logits predict it
    targets: list[int] = []
    owners: list[int] = []
    spans: list[tuple[int, int, int, int]] = []
    for k, slot in enumerate(slots):
        pair, start = slot.pair, len(ids)
        p, c = len(pair.prompt), len(pair.chosen)
        ids += pair.prompt + pair.chosen + pair.rejected
        positions += [*range(p), *range(p, p + c), *range(p, p + len(pair.rejected))]
        spans.append((start, p, c, len(pair.rejected)))
        for side, reply, first in ((0, pair.chosen, start + p), (1, pair.rejected, start + p + c)):
            for j, token in enumerate(reply):
                # Token j of a reply is predicted by the one before it; the first by the prompt's last token.
                at = first + j - 1 if j else start + p - 1
                if at < start:
                    continue  # an empty prompt: nothing predicts the first reply token
                predictors.append(at)
                targets.append(token)
                owners.append(2 * k + side)
    keep = sorted(set(predictors))
    where = {pos: i for i, pos in enumerate(keep)}
    return DpoRow(
        input_ids=torch.tensor([ids]),
        position_ids=torch.tensor([positions]),
        spans=spans,
        keep=torch.tensor(keep, dtype=torch.long),
        at=torch.tensor([where[a] for a in predictors], dtype=torch.long),
        target=torch.tensor(targets, dtype=torch.long),
        owner=torch.tensor(owners, dtype=torch.long),
        pairs=[s.index for s in slots],
    )


def attention_mask(row: DpoRow, model: nn.Module, device: torch.device) -> torch.Tensor:
    """The row's [1, 1, L, L] mask, which the model's attention takes as given: boolean for sdpa, additive for eager."""
    mask = row.allowed().to(device)[None, None]
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl == "eager":
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, torch.finfo(dtype).min)
    return mask


def row_logps(model: nn.Module, row: DpoRow, device: torch.device) -> RowLogps:
    """Forward one row; each pair's summed log-prob of its chosen and of its rejected reply."""
    out = model(
        input_ids=row.input_ids.to(device),
        attention_mask=attention_mask(row, model, device),
        position_ids=row.position_ids.to(device),
        logits_to_keep=row.keep.to(device),
        use_cache=False,
    )
    logits = out.logits[0].float()  # [K, vocab]
    at, target, owner = row.at.to(device), row.target.to(device), row.owner.to(device)
    # log p(token) = its logit - logsumexp over the vocabulary; no [T, vocab] log-softmax is materialised.
    token_logps = logits[at, target] - torch.logsumexp(logits, dim=-1)[at]
    sums = torch.zeros(2 * len(row.pairs), device=device, dtype=token_logps.dtype).index_add(0, owner, token_logps)
    chosen = owner % 2 == 0
    with torch.no_grad():
        correct = int((logits.argmax(-1)[at] == target)[chosen].sum())
    return RowLogps(sums[0::2], sums[1::2], correct, int(chosen.sum()))
