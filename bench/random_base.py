"""A Llama-shaped base with random weights built offline from a config (nothing downloaded): the ~1B shape of
the GPU check's training benchmark, or a tiny one for its dry mode; registered as a local directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

# Llama-3.2-1B's body (hidden 2048, 16 layers, 32 query and 8 KV heads, MLP 8192) on the tokenizer given
# (SmolLM2's 49k vocabulary: about 1.07 B parameters with tied embeddings); the dry mode's is ftserve-tiny's size.
SHAPES: dict[str, dict[str, Any]] = {
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}


def build_random_base(target: Path, tokenizer_from: Path, shape: str, device: torch.device) -> Path:
    """Write a random-weight Llama of `shape` (bf16 safetensors) with `tokenizer_from`'s tokenizer to `target`;
    initialised on `device` (a GPU does 1B parameters in a second, a CPU in tens of seconds)."""
    if (target / "config.json").exists():
        return target
    tok = AutoTokenizer.from_pretrained(str(tokenizer_from))
    eos = tok.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
        bos_token_id=tok.bos_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16)  # type: ignore[arg-type]
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=config.pad_token_id)
    tmp = target.with_name(f".{target.name}.tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    tmp.rename(target)
    return target


def registry_entry(path: Path) -> dict[str, Any]:
    """The base's entry in FTSERVE_BASE_MODELS: a local directory, used in place."""
    return {"source": str(path), "dtype": "auto", "max_seq_len": 2048, "description": f"random-weight Llama at {path}"}
