"""LoRA target modules per architecture: the attention and MLP linear layers, never the LM head or embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

from ftserve.core.errors import TrainingError

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# config.model_type → names of every linear layer in attention and MLP (peft matches a name as the last
# component(s) of a module's path). tests/unit/test_families.py checks each row against transformers' own
# modules: a row must name exactly the linear layers of the model except its output head.
TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_LIKE,  # Llama 2/3.x, SmolLM/SmolLM2, TinyLlama
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,  # Qwen2, Qwen2.5
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),  # Phi-1.5, Phi-2
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),  # Phi-3, Phi-3.5-mini (fused)
    "gpt2": ("c_attn", "c_proj", "c_fc"),  # transformers Conv1D, not nn.Linear
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),  # Pythia, GPT-NeoX
}


@dataclass(frozen=True)
class TargetChoice:
    """The modules LoRA wraps, how they were chosen, and the sentence the job's events say about it."""

    modules: list[str]
    fan_in_fan_out: bool  # Conv1D stores its weight transposed (GPT-2)
    fallback: bool
    message: str


def _head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def _linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear / Conv1D by its full name, except the output head (the LM head)."""
    head = _head(model)
    return {
        name: m for name, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D) and m is not head and name
    }


def _matches(name: str, key: str) -> bool:
    # peft's rule for a list of names: the whole path, or its last components after a dot.
    return name == key or name.endswith(f".{key}")


def _fan_in_fan_out(layers: dict[str, nn.Module], keys: list[str]) -> bool:
    chosen = [m for n, m in layers.items() if any(_matches(n, k) for k in keys)]
    return bool(chosen) and all(isinstance(m, Conv1D) for m in chosen)


def _fallback_names(layers: dict[str, nn.Module], model: nn.Module) -> list[str]:
    """Short leaf names when they name nothing else (the head, a container); otherwise full paths."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in layers})
    others = [n for n, _ in model.named_modules() if n and n not in layers]
    if any(_matches(o, leaf) for o in others for leaf in leaves):
        return sorted(layers)
    return leaves


def choose_target_modules(model: nn.Module, requested: list[str] | None = None) -> TargetChoice:
    """LoRA targets for this model: the job's own list, else the architecture's row, else every linear layer."""
    layers = _linear_layers(model)
    model_type = str(getattr(getattr(model, "config", None), "model_type", "unknown"))
    if requested:
        missing = [k for k in requested if not any(_matches(n, k) for n, _ in model.named_modules())]
        if missing:
            raise TrainingError(
                "invalid_target_modules",
                f"extensions.target_modules names modules this {model_type} model does not have: "
                f"{', '.join(missing)}; its linear layers are {', '.join(_fallback_names(layers, model))}",
                "extensions.target_modules",
            )
        keys = list(requested)
        return TargetChoice(
            keys,
            _fan_in_fan_out(layers, keys),
            False,
            f"LoRA target modules (from extensions.target_modules): {', '.join(keys)}",
        )
    row = TARGET_MODULES.get(model_type)
    if row is not None and all(any(_matches(n, k) for n in layers) for k in row):
        keys = list(row)
        return TargetChoice(
            keys, _fan_in_fan_out(layers, keys), False, f"LoRA target modules for {model_type}: {', '.join(keys)}"
        )
    keys = _fallback_names(layers, model)
    if not keys:
        raise TrainingError("model_not_supported", f"The {model_type} model has no linear layers for LoRA", "model")
    why = "has no entry in the target-module table" if row is None else "does not have the layers its table row names"
    return TargetChoice(
        keys,
        _fan_in_fan_out(layers, keys),
        True,
        f"Architecture '{model_type}' {why}: LoRA targets every linear layer except the LM head ({', '.join(keys)})",
    )
