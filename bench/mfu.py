"""Model FLOPs and MFU: the FLOPs a model's tokens need, against the card's dense bf16 tensor-core peak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

# Dense bf16 tensor-core peaks in FLOP/s (NVIDIA's datasheets quote twice these, "with sparsity"). A device name
# (torch.cuda.get_device_name) takes the first entry it contains, so the more specific names come first:
# "NVIDIA H100 80GB HBM3" is the SXM card, "NVIDIA H100 PCIe" and "NVIDIA H100 NVL" the others.
BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835e12),
    ("H200", 989e12),  # H200 SXM: the H100 SXM's tensor cores, more and faster memory
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # H100 SXM
    ("A100", 312e12),
)

# FLOPs per token, N = matmul_params (below). A forward multiplies every weight once: 2N (a multiply and an add).
# Training adds the backward, twice the forward: 6N, the usual convention (Kaplan et al.). LoRA freezes the base,
# so the base's weight gradients (2N of the 4N) are never computed: the hardware does nearer 4N, and a LoRA MFU
# at 6N reads up to 1.5x above the tensor cores' actual utilisation, as a full fine-tune's MFU would be counted.
# Inference: 2N per generated token (the prompt's prefill is left out). The attention scores' own FLOPs
# (about 4 x layers x context x hidden per token) are left out of these; training's are counted apart
# (attention_train_flops): with examples of a few hundred tokens they are ~8% of a LoRA step's FLOPs.
TRAIN_FLOPS_PER_PARAM = 6
INFERENCE_FLOPS_PER_PARAM = 2


def matmul_params(model: nn.Module) -> int:
    """The non-embedding parameters a token is multiplied by: every weight but the input embedding's lookup table,
    the LM head counted once even when it shares that table (its matmul is per-token compute)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    get_in: Any = getattr(model, "get_input_embeddings", None)
    get_out: Any = getattr(model, "get_output_embeddings", None)
    embed = get_in() if get_in else None
    head = get_out() if get_out else None
    if embed is not None:
        total -= embed.weight.numel()
        if head is not None and head.weight is embed.weight:
            total += head.weight.numel()
    return total


def matmul_params_of(path: Path) -> int:
    """matmul_params of the model saved at `path`, built from its config on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return matmul_params(model)


def head_params(model: nn.Module) -> int:
    """The LM head's weights (vocabulary × hidden): matmul_params less these is the transformer body."""
    get_out: Any = getattr(model, "get_output_embeddings", None)
    head = get_out() if get_out else None
    return int(head.weight.numel()) if head is not None else 0


def lora_train_flops(body: int, head: int, tokens: int, head_positions: int, recompute: bool = False) -> float:
    """FLOPs of LoRA training passes: 4·body per token through the transformer (forward 2·body, the backward's
    input gradient 2·body; the frozen base's weight gradients are never computed), 2·body more per token when
    gradient checkpointing recomputes the forward, and 4·head per position the LM head is computed at (forward
    and input gradient; the head is frozen too). LoRA's own rank-r products are left out (a few percent), and so
    is attention, which has no weights: attention_train_flops counts it."""
    return (6.0 if recompute else 4.0) * body * tokens + 4.0 * head * head_positions


def attention_train_flops(layers: int, width: int, lengths: list[int]) -> float:
    """FLOPs of causal attention in a training pass, per layer and sequence of L tokens: its L²/2 query-key pairs
    times width (heads × head_dim) times 2 (a multiply and an add) for each product: QKᵀ and PV forward (2·width·L²),
    the backward's dV, dP, dQ and dK (4·width·L²); 6·width·L² in all, as PaLM's 12·layers·width·L per token
    halved for the causal mask. Skipped pairs (a kernel's causal blocks) and recomputation are not counted."""
    return 6.0 * layers * width * float(sum(n * n for n in lengths))


def attention_width(config: Any) -> int:
    """heads × head_dim of a transformers config (head_dim defaults to hidden / heads)."""
    heads = int(config.num_attention_heads)
    return heads * int(getattr(config, "head_dim", None) or config.hidden_size // heads)


def bf16_peak(device_name: str) -> float | None:
    """The card's dense bf16 peak in FLOP/s, None for a card (or a CPU) not in the table."""
    return next((peak for key, peak in BF16_PEAKS if key in device_name), None)


def model_flops(params: int, tokens_per_s: float, training: bool) -> float:
    """FLOP/s the model's arithmetic amounts to at this rate (6N per token training, 2N generating)."""
    return (TRAIN_FLOPS_PER_PARAM if training else INFERENCE_FLOPS_PER_PARAM) * params * tokens_per_s


def mfu(flops: float, device_name: str) -> float | None:
    """The share of the card's bf16 peak those FLOP/s are; None where no peak is known (the CPU)."""
    peak = bf16_peak(device_name)
    return None if peak is None else flops / peak


def device_name(device: torch.device) -> str:
    """The CUDA card's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
