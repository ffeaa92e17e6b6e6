"""GRPO's loss as TRL's `GRPOTrainer` defines it with its defaults (loss_type "dapo", scale_rewards "group",
epsilon 0.2, one optimisation pass per generation): group-relative advantages, the clipped importance ratio per
completion token, an optional KL term to a reference, summed over every completion token of the step and divided
by their count. tests/unit/test_rft_loss.py checks it against TRL's own `_compute_loss`. A group's completions
share their prompt: it goes through the model once per pass (shared_prefix_logps), not once per completion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# TRL adds this to the group's standard deviation before dividing (scale_rewards "group").
STD_EPSILON = 1e-4


@dataclass(frozen=True)
class GrpoConfig:
    """TRL's GRPOConfig defaults for the terms the loss reads."""

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0  # the KL coefficient; 0 (TRL's default) needs no reference log-probs


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """Each completion's reward minus its group's mean, over the group's (unbiased) standard deviation + 1e-4;
    `rewards` holds the groups one after another, `group` completions each."""
    if rewards.numel() == 0:  # a gang rank with no prompts this step
        return rewards.float()
    grouped = rewards.float().view(-1, group)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group > 1 else torch.zeros_like(mean)
    return ((grouped - mean) / (std + STD_EPSILON)).view(-1)


def per_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    config: GrpoConfig,
    ref_logps: torch.Tensor | None = None,
) -> torch.Tensor:
    """[rows, tokens] of -min(r·A, clip(r, 1-ε_low, 1+ε_high)·A) (+ β·r·KL, the k3 estimator of KL to the
    reference times the ratio, TRL's default `use_bias_correction_kl`: differentiable, so it shapes the gradient
    even where r is 1), where r = exp(logp - old_logp) per token and A is the row's advantage."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - config.epsilon_low, 1 + config.epsilon_high)
    adv = advantages.unsqueeze(1)
    loss = -torch.min(ratio * adv, clipped * adv)
    if config.beta != 0.0:
        if ref_logps is None:
            raise ValueError("a KL coefficient needs the reference log-probs")
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        loss = loss + config.beta * kl * ratio
    return loss


def completion_logps(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """Per row of right-padded `ids` ([rows, length], `mask` 1 on real tokens), the log-prob of every token from
    its completion's first (at `starts[row]`) on, left-aligned in [rows, longest completion] (0 past the end)."""
    # Logits only from the position before the earliest completion on (the LM head and the log-softmax over the
    # vocabulary are a fifth of the pass; the prompts' positions need neither).
    offset = min(starts) - 1
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=ids.shape[1] - offset).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token = torch.gather(logprobs, 2, ids[:, offset + 1 :].unsqueeze(-1)).squeeze(-1)  # token t+1 given ..t
    lengths = mask.sum(dim=1).tolist()
    width = max(int(n) - s for n, s in zip(lengths, starts, strict=True))
    out = token.new_zeros((ids.shape[0], width))
    for row, (n, s) in enumerate(zip(lengths, starts, strict=True)):
        out[row, : int(n) - s] = token[row, s - 1 - offset : int(n) - 1 - offset]
    return out


def shared_prefix_logps(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    completions: Sequence[list[int]],
    owner: Sequence[int],
    pad_id: int,
    device: torch.device,
) -> torch.Tensor:
    """completion_logps of the rows (prompts[owner[r]], completions[r]), each distinct prompt run through the model
    once: its keys and values are handed to every completion that follows it, so the gradient still reaches the
    prompt's positions from each of them (the same loss and gradients, less work: a group of n completions
    costs one prompt, not n)."""
    plens = [len(p) for p in prompts]
    ids = torch.full((len(prompts), max(plens)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, : len(prompt)] = torch.tensor(prompt)
        mask[i, : len(prompt)] = 1
    # Right-padded prompts (no row is all padding, so no attention row is empty); the logits only at each prompt's
    # last position, which predicts its completions' first tokens.
    last = torch.tensor(plens) - 1
    keep = torch.unique(last)
    out = model(
        input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, logits_to_keep=keep.to(device)
    )
    first = torch.log_softmax(out.logits[torch.arange(len(prompts)), torch.searchsorted(keep, last)].float(), dim=-1)
    index = torch.tensor(list(owner), device=device)
    cache = out.cache
    cache.batch_select_indices(index)  # a differentiable gather: row r reads its prompt's keys and values
    width = max(len(c) for c in completions)
    logps = first.new_zeros((len(completions), width))
    heads = torch.tensor([c[0] for c in completions], device=device)
    logps[:, 0] = first[index, heads]
    if width == 1:
        return logps
    # The completions minus their last token, after their prompt's padding (masked out), at the positions that
    # follow their own prompt's last.
    feed = torch.full((len(completions), width - 1), pad_id, dtype=torch.long)
    feed_mask = torch.zeros_like(feed)
    for r, completion in enumerate(completions):
        feed[r, : len(completion) - 1] = torch.tensor(completion[:-1])
        feed_mask[r, : len(completion) - 1] = 1
    starts = torch.tensor([plens[o] for o in owner]).unsqueeze(1)
    positions = starts + torch.arange(width - 1).unsqueeze(0)
    full_mask = torch.cat([mask[index.cpu()], feed_mask], dim=1)
    logits = model(
        input_ids=feed.to(device),
        attention_mask=full_mask.to(device),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
    ).logits
    targets = torch.full((len(completions), width - 1), 0, dtype=torch.long)
    for r, completion in enumerate(completions):
        targets[r, : len(completion) - 1] = torch.tensor(completion[1:])
    rest = torch.gather(torch.log_softmax(logits.float(), dim=-1), 2, targets.to(device).unsqueeze(-1)).squeeze(-1)
    return torch.cat([logps[:, :1], rest * feed_mask.to(device)], dim=1)


# A pass's reference log-probs, laid out as completion_logps lays out the policy's (for a KL term).
Reference = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


def backward_step(
    model: torch.nn.Module,
    rows: Sequence[tuple[list[int], list[int]]],
    advantages: torch.Tensor,
    config: GrpoConfig,
    backward: Callable[[torch.Tensor], float],
    pad_id: int,
    device: torch.device,
    rows_per_pass: int = 8,
    reference: Reference | None = None,
    total: int | None = None,
) -> float:
    """Backpropagate one step's loss over its (prompt, completion) rows, `rows_per_pass` rows per forward: a sum
    over every completion token over their count (TRL's "dapo"), each pass's share handed to `backward`, which
    returns its value; the step's loss. `total` is that count when the rows are one share of a step (a gang
    rank's): the whole step's, so the shares' losses and gradients sum to the step's; None, these rows' own.
    Rows with advantage 0 add nothing to the loss or its gradient when there is no KL term, so their passes are
    skipped."""
    if total is None:
        total = sum(len(completion) for _, completion in rows)
    order = sorted(range(len(rows)), key=lambda j: len(rows[j][1]), reverse=True)
    if config.beta == 0.0:
        order = [j for j in order if float(advantages[j]) != 0.0]
    # Gradient checkpointing drops the key/value cache a shared prompt needs: one row per prompt then.
    share = not getattr(model, "is_gradient_checkpointing", False)
    value = 0.0
    for chunk in _passes(rows, order, rows_per_pass) if share else _chunks(order, rows_per_pass):
        ids, mask, starts, completion_mask = _pass([rows[j] for j in chunk], pad_id, device)
        if share:
            prompts = list({tuple(rows[j][0]): None for j in chunk})
            owner = [prompts.index(tuple(rows[j][0])) for j in chunk]
            completions = [rows[j][1] for j in chunk]
            logps = shared_prefix_logps(model, [list(p) for p in prompts], completions, owner, pad_id, device)
        else:
            logps = completion_logps(model, ids, mask, starts)
        ref = None
        if reference is not None and config.beta != 0.0:
            with torch.no_grad():
                ref = reference(ids, mask, starts)
        losses = per_token_loss(logps, logps.detach(), advantages[chunk].to(device), config, ref)
        value += backward((losses * completion_mask).sum() / total)
    return value


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[start : start + size] for start in range(0, len(order), size)]


def _passes(rows: Sequence[tuple[list[int], list[int]]], order: list[int], size: int) -> list[list[int]]:
    """The rows in `order` (longest completion first), a prompt's rows kept in one pass, passes of about `size`
    rows: whole groups are added until a pass holds `size` rows or more."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for j in order:
        by_prompt.setdefault(tuple(rows[j][0]), []).append(j)
    passes: list[list[int]] = [[]]
    for members in by_prompt.values():
        if len(passes[-1]) >= size:
            passes.append([])
        passes[-1].extend(members)
    return [p for p in passes if p]


def _pass(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
    """Right-padded prompt + completion ids, their attention mask, where each completion starts, and the
    completion mask (left-aligned, as completion_logps lays its output out)."""
    seqs = [prompt + completion for prompt, completion in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    completion_mask = torch.zeros((len(seqs), max(len(c) for _, c in rows)))
    for r, (seq, (_, completion)) in enumerate(zip(seqs, rows, strict=True)):
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        completion_mask[r, : len(completion)] = 1
    starts = [len(prompt) for prompt, _ in rows]
    return ids.to(device), mask.to(device), starts, completion_mask.to(device)
