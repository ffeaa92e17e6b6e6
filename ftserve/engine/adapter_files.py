"""Reading a PEFT LoRA adapter directory (safetensors only) into tensors the multi-LoRA layers take."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

PREFIX = "base_model.model."


class UnsupportedAdapter(ValueError):
    """The adapter uses a PEFT feature this server does not apply (DoRA, embeddings, biases…)."""


@dataclass
class LoadedAdapter:
    """An adapter read into CPU memory: per module name, A [r, in] and B·scale [out, r]."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    nbytes: int


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    # PEFT matches rank/alpha patterns as regexes against the end of the module name.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return default


def read_adapter(path: Path, dtype: torch.dtype) -> LoadedAdapter:
    """Read a PEFT LoRA adapter (safetensors only) into per-module (A, B·scale) tensors on the CPU."""
    config = json.loads((path / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise UnsupportedAdapter(f"peft_type {config.get('peft_type')} is not LoRA")
    for flag in ("use_dora", "modules_to_save"):
        if config.get(flag):
            raise UnsupportedAdapter(f"'{flag}' is not supported for serving")
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapter("LoRA biases are not supported for serving")
    alpha = float(config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora", False))
    alphas = dict(config.get("alpha_pattern") or {})
    tensors = load_file(str(path / "adapter_model.safetensors"), device="cpu")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key)
        if m is None or not m.group(1).startswith(PREFIX):
            raise UnsupportedAdapter(f"unexpected tensor '{key}'")
        pairs.setdefault(m.group(1).removeprefix(PREFIX), {})[m.group(2)] = t
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    nbytes = 0
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"} or ab["A"].shape[0] != ab["B"].shape[1]:
            raise UnsupportedAdapter(f"module '{name}' lacks a matching lora_A/lora_B pair")
        rank = ab["A"].shape[0]
        a_ = _pattern_value(alphas, name, alpha)
        scale = a_ / (math.sqrt(rank) if rslora else rank)
        a = ab["A"].to(dtype)
        b = (ab["B"].float() * scale).to(dtype)
        modules[name] = (a, b)
        nbytes += a.numel() * a.element_size() + b.numel() * b.element_size()
    if not modules:
        raise UnsupportedAdapter("the adapter holds no LoRA weights")
    return LoadedAdapter(modules, nbytes)
