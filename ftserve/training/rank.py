"""This process's place in a torchrun gang (rank, world size, device, from torchrun's environment) and the few
collectives training needs: sums, maxima, a word from rank 0, the LoRA gradients summed, rank 0's weights to all.
A process outside a gang is rank 0 of 1, and every collective is then a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Gang:
    """Rank `rank` of `size` processes; `local_rank` picks this host's device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    hosts: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that talks to the DB and writes checkpoints."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Gang:
        """From the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        return cls(rank, size, local_rank, max(1, size // local))

    def device(self) -> torch.device:
        """One GPU per process (cuda:LOCAL_RANK), else the CPU."""
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def start(self, timeout_s: float) -> None:
        """Join the process group torchrun prepared: nccl on CUDA, gloo on CPU."""
        if self.size > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))

    def stop(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _device(self) -> torch.device:
        # nccl reduces CUDA tensors only; gloo CPU ones.
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def sums(self, values: list[float]) -> list[float]:
        """Each value summed over every rank (float64, so counts stay exact)."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def maxes(self, values: list[float]) -> list[float]:
        """Each value's largest over every rank (float64)."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [float(v) for v in t.cpu()]

    def most(self, value: int) -> int:
        """The largest of every rank's value."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def word_from_main(self, value: int) -> int:
        """Rank 0's value, on every rank (what the others pass is ignored)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self._device())
        dist.broadcast(t, 0)
        return int(t.item())

    def sum_grads(self, params: list[nn.Parameter]) -> None:
        """Sum the gradients of params over every rank in one flat all-reduce (a rank with no examples this
        step contributes zeros). LoRA gradients are small, so one bucket is enough."""
        if self.size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self._device())
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(p.device)
            offset += n

    def same_weights(self, params: list[nn.Parameter]) -> None:
        """Every rank starts from rank 0's trainable weights (seeded alike anyway; this makes it certain)."""
        if self.size == 1:
            return
        with torch.no_grad():
            for p in params:
                t = p.data.to(self._device())
                dist.broadcast(t, 0)
                p.data.copy_(t)


SINGLE = Gang()  # a process outside any gang


def is_gang_fault(exc: BaseException) -> bool:
    """An error from a collective: a peer died or its connection dropped, which fails the gang, not the job."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, dist.DistError):
            return True
        text = str(seen)
        if any(s in text for s in ("Gloo", "gloo", "NCCL", "Connection closed by peer", "Connection reset")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
