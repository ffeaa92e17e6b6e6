"""FSDP for a gang whose base does not fit one device (FTSERVE_GANG_SHARDING=fsdp): torch's FSDP2
(`fully_shard`) shards the frozen base over the gang's ranks, one unit per decoder layer; the LoRA weights stay
whole on every rank (FSDP ignores them), so their gradients, clipping, optimizer and saved adapter are the
data-parallel gang's, unchanged. FSDP gathers each unit's weights per forward, so every rank must run as many
forwards and backwards per step as the others: the trainer pads a short share with idle passes."""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from ftserve.training.rank import Gang


def _layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers: the classes transformers names as never split across devices."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_base(model: nn.Module, gang: Gang, device: torch.device) -> float:
    """Shard model's frozen weights over the gang onto `device` (each rank keeps 1/size of them); the trainable
    (LoRA) weights stay whole and are moved to `device`. Every rank calls this on identical weights. The share
    of the frozen weights this rank holds."""
    mesh = init_device_mesh(device.type, (gang.size,))
    lora = {p for p in model.parameters() if p.requires_grad}
    # Reshard after every forward, the root's too: a unit left gathered after an evaluation would make rank 0's
    # state_dict (a checkpoint) reshard alone, and the ranks' next gathers would no longer match.
    for layer in _layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True, ignored_params=lora & set(layer.parameters()))
    fully_shard(model, mesh=mesh, reshard_after_forward=True, ignored_params=lora)
    with torch.no_grad():
        for p in lora:
            p.data = p.data.to(device)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in frozen)
    return held / max(1, sum(p.numel() for p in frozen))
