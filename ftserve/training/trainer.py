"""The LoRA training loop on token-weighted micro-batches: weighted-mean loss, accumulation, metrics."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftserve.models import attention
from ftserve.training import fused_lora, head_loss, rms_norm, rotary, swiglu
from ftserve.training.batching import MicroBatch
from ftserve.training.rank import Gang


@dataclass(frozen=True)
class StepResult:
    loss: float
    accuracy: float | None
    tokens: int  # non-padding tokens processed
    loss_tokens: int  # tokens with a non-zero loss weight


@dataclass(frozen=True)
class LossSums:
    weighted_ce: torch.Tensor
    weight: float
    correct: int
    completion_tokens: int


def loss_sums(model: nn.Module, mb: MicroBatch, device: torch.device) -> LossSums:
    """Forward one micro-batch; sum of weight × cross-entropy over the positions that carry weight.

    Only positions that predict a weighted token go through the LM head (logits_to_keep), so prompt
    tokens under completion-only loss cost no vocabulary projection at all.
    """
    w = mb.weights[:, 1:]
    keep = torch.nonzero(w.sum(0) > 0).flatten()  # positions t-1 whose next token carries weight
    if keep.numel() == 0:
        return LossSums(torch.zeros((), device=device), 0.0, 0, 0)
    targets = mb.input_ids[:, 1:][:, keep].to(device)
    weights = w[:, keep].to(device)
    comp = mb.completion[:, 1:][:, keep].to(device)
    inputs = {"input_ids": mb.input_ids.to(device), "use_cache": False, **_layout(model, mb, device)}
    fused = head_loss.fusable_head(model)
    if fused is not None:
        # The head and the loss as one op (training/head_loss): one [positions, vocab] buffer, not three.
        decoder, head = fused
        hidden = decoder(**inputs).last_hidden_state[:, keep.to(device)]
        total, argmax = head_loss.weighted_ce(
            hidden.reshape(-1, hidden.shape[-1]), head, targets.reshape(-1), weights.reshape(-1)
        )
        correct = int(((argmax.view_as(targets) == targets) & comp).sum())
        return LossSums(total, float(weights.sum()), correct, int(comp.sum()))
    logits = model(**inputs, logits_to_keep=keep.to(device)).logits.float()  # [rows, len(keep), vocab]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    ce = ce.view_as(weights)
    correct = int(((logits.argmax(-1) == targets) & comp).sum())
    return LossSums((ce * weights).sum(), float(weights.sum()), correct, int(comp.sum()))


def _layout(model: nn.Module, mb: MicroBatch, device: torch.device) -> dict[str, Any]:
    """The attention inputs of a micro-batch: its position ids, and what keeps its sequences apart."""
    rows, cols = mb.input_ids.shape
    if mb.attention_mask is not None:
        # Right-padded rows: causal attention alone keeps every real token off the padding that follows it, so no
        # mask is given and sdpa runs its causal kernel (half the pairs, grouped key/value heads not repeated);
        # the padding's positions count on, so that no restart reads as a packed row. Pads' outputs carry no loss.
        return {"position_ids": torch.arange(cols, device=device).expand(rows, cols)}
    kwargs: dict[str, Any] = {"position_ids": mb.position_ids.to(device)}
    if rows == 1 and getattr(model.config, "_attn_implementation", None) == attention.NAME:
        # attended per sequence, not through a [T, T] block mask
        kwargs |= attention.packed_kwargs(mb.position_ids, device)
    return kwargs


def lr_factor(step: int, total_steps: int, warmup_steps: int, scheduler: str) -> float:
    """The learning-rate multiplier at optimizer step `step` (0-based): linear warmup, then the decay."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = min(max((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0), 1.0)
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


class LoraTrainer:
    """AdamW over the trainable (LoRA) parameters with linear warmup, then linear, cosine or no decay."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        lr: float,
        total_steps: int,
        warmup_ratio: float = 0.0,
        scheduler: str = "linear",
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        gradient_checkpointing: bool = False,
        gang: Gang = Gang(),
        lockstep: bool = False,
        fused: bool = True,
    ) -> None:
        self.model = model
        self.device = device
        self.gang = gang
        # Under FSDP (training/sharding) every forward gathers weights across the gang: every rank must run as
        # many forwards (and backwards) as the others, so a rank with fewer micro-batches runs idle passes.
        self.lockstep = lockstep and gang.size > 1
        if gradient_checkpointing:
            # Frozen embeddings give no input that requires grad; checkpointed blocks need one to backprop.
            model.enable_input_require_grads()  # type: ignore[operator]
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
        # Mixed precision: peft keeps LoRA weights in fp32, so every adapted layer would cast its bf16 input
        # up and its output back (a fifth of a CPU step). The live LoRA weights compute in the base's
        # dtype instead; fp32 master copies take the gradients and the optimizer's updates.
        self.live = [p for p in model.parameters() if p.requires_grad]
        compute = next((p.dtype for p in model.parameters() if not p.requires_grad), torch.float32)
        self.mixed = compute in (torch.bfloat16, torch.float16) and any(p.dtype == torch.float32 for p in self.live)
        if self.mixed:
            self.params = [nn.Parameter(p.detach().float().clone()) for p in self.live]
            for p in self.live:
                p.data = p.data.to(compute)
        else:
            self.params = self.live
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        warmup = math.ceil(total_steps * warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total_steps, warmup, scheduler)
        )
        self.max_grad_norm = max_grad_norm
        self.gradient_checkpointing = gradient_checkpointing
        # LoRA linears as one op each (training/fused_lora), RMSNorm as one op each way (training/rms_norm),
        # the MLP's gated product on gate‖up (training/swiglu, after fused_lora: it reads its groups) and the
        # rotary embedding (training/rotary) as one op each; not under FSDP, whose gathers wrap the layers' own
        # parameter accesses: that path stays peft's as it was.
        self._unfuse = (
            [fused_lora.fuse(model), rms_norm.fuse(model), swiglu.fuse(model), rotary.fuse()]
            if fused and not self.lockstep
            else []
        )
        gang.same_weights(self.params)
        if self.mixed:
            with torch.no_grad():
                for p, master in zip(self.live, self.params, strict=True):
                    p.copy_(master)

    def close(self) -> None:
        """Undo what __init__ changed on the model, so a cached base serves the next job as it was."""
        for undo in reversed(self._unfuse):
            undo()
        self._unfuse = []
        if self.mixed:
            for p, master in zip(self.live, self.params, strict=True):
                p.data = master.data
        if self.gradient_checkpointing:
            self.model.gradient_checkpointing_disable()  # type: ignore[operator]
            self.model.disable_input_require_grads()  # type: ignore[operator]

    def step(self, micro_batches: list[MicroBatch]) -> StepResult:
        """One optimizer step over all micro-batches: the loss is the weighted mean over the whole step.

        In a gang, micro_batches are this rank's share; the weight is summed over every rank first, so each
        rank's loss is its part of the one step's mean, and the summed gradients are exactly one process's."""
        local_weight = float(sum(mb.weights[:, 1:].sum() for mb in micro_batches))
        real = sum(mb.real_tokens for mb in micro_batches)
        (total_weight,) = self.gang.sums([local_weight])
        if total_weight <= 0:
            (tokens,) = self.gang.sums([float(real)])
            return StepResult(float("nan"), None, int(tokens), 0)
        self.begin_step()
        loss_total = 0.0
        correct = completion = 0
        for mb in self._passes(micro_batches):
            if mb is None:
                self.backward(self._idle_pass() * 0.0)
                continue
            sums = loss_sums(self.model, mb, self.device)
            loss_total += self.backward(sums.weighted_ce / total_weight)
            correct += sums.correct
            completion += sums.completion_tokens
        self.finish_step()
        loss_tokens = int(sum(int((mb.weights[:, 1:] > 0).sum()) for mb in micro_batches))
        loss, right, scored, tokens, weighted = self.gang.sums(
            [loss_total, float(correct), float(completion), float(real), float(loss_tokens)]
        )
        return StepResult(loss, right / scored if scored else None, int(tokens), int(weighted))

    def _passes(self, micro_batches: list[MicroBatch]) -> list[MicroBatch | None]:
        """The micro-batches to run; in lockstep, each one with no weighted token (which loss_sums would skip)
        and the gang's longest share's excess become None: an idle pass."""
        if not self.lockstep:
            return list(micro_batches)
        real: list[MicroBatch | None] = [mb if bool((mb.weights[:, 1:] > 0).any()) else None for mb in micro_batches]
        return real + [None] * (self.gang.most(len(real)) - len(real))

    def _idle_pass(self) -> torch.Tensor:
        """A forward on two tokens of id 0: its gathers keep this rank in step with the gang; its output (a scalar
        that, times zero, adds nothing to any gradient) lets a training step backward through it too."""
        ids = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        positions = torch.arange(2, device=self.device).unsqueeze(0)
        out = self.model(input_ids=ids, position_ids=positions, logits_to_keep=1, use_cache=False)
        return out.logits.float().sum()

    # One optimizer step is begin_step, backward per micro-batch (losses already scaled to the step), finish_step;
    # every training method (supervised, DPO) steps through these, so precision and clipping are shared.
    def begin_step(self) -> None:
        """Start an optimizer step: train mode, gradients cleared."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> float:
        """Add one micro-batch's share of the step's loss to the gradients; its value."""
        loss.backward()
        self._accumulate_master_grads()
        return float(loss.detach())

    def finish_step(self) -> None:
        """Sum the gradients over the gang, clip, update the (master) weights, advance the schedule, refresh
        the live low-precision weights."""
        self.gang.sum_grads(self.params)
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.mixed:
            with torch.no_grad():
                for p, master in zip(self.live, self.params, strict=True):
                    p.copy_(master)

    def _accumulate_master_grads(self) -> None:
        """Move this micro-batch's low-precision gradients into the fp32 masters (summing there, not in bf16)."""
        if not self.mixed:
            return
        for p, master in zip(self.live, self.params, strict=True):
            if p.grad is None:
                continue
            g = p.grad.float()
            master.grad = g if master.grad is None else master.grad.add_(g)
            p.grad = None

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """While inside, the model's trainable weights are the fp32 masters: what checkpoints must save."""
        if not self.mixed:
            yield
            return
        compute = [p.data for p in self.live]
        for p, master in zip(self.live, self.params, strict=True):
            p.data = master.data
        try:
            yield
        finally:
            for p, data in zip(self.live, compute, strict=True):
                p.data = data

    @torch.no_grad()
    def evaluate(self, micro_batches: list[MicroBatch]) -> tuple[float, float | None]:
        """Weighted-mean loss and completion-token accuracy, without updating anything."""
        self.model.eval()
        ce = weight = 0.0
        correct = completion = 0
        for mb in self._passes(micro_batches):
            if mb is None:
                self._idle_pass()
                continue
            sums = loss_sums(self.model, mb, self.device)
            ce += float(sums.weighted_ce)
            weight += sums.weight
            correct += sums.correct
            completion += sums.completion_tokens
        ce, weight, right, scored = self.gang.sums([ce, weight, float(correct), float(completion)])
        return (ce / weight if weight else float("nan")), (right / scored if scored else None)
