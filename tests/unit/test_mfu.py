"""bench/mfu.py: which bf16 peak a card's name takes, and the non-embedding parameters its FLOPs count."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.mfu import bf16_peak, matmul_params, mfu, model_flops


def test_card_names_take_their_own_peak() -> None:
    assert bf16_peak("NVIDIA H100 80GB HBM3") == 989e12  # the SXM card
    assert bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert bf16_peak("NVIDIA H100 NVL") == 835e12
    assert bf16_peak("NVIDIA H200") == 989e12
    assert bf16_peak("NVIDIA H200 NVL") == 835e12
    assert bf16_peak("AMD EPYC 9654") is None and mfu(1e12, "AMD EPYC 9654") is None
    assert mfu(model_flops(10**9, 1e4, training=True), "NVIDIA H100 PCIe") == 6e13 / 756e12


def test_matmul_params_drop_the_embedding_lookup_but_keep_the_head() -> None:
    for tied in (True, False):
        config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)  # fmt: skip
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        body = sum(p.numel() for p in model.model.layers.parameters()) + model.model.norm.weight.numel()
        assert matmul_params(model) == body + 100 * 16  # the head's matmul, tied or not


def test_attention_train_flops_are_half_the_full_products_torch_counts() -> None:
    """torch's FLOP counter over attention written as matmuls (scores, softmax, weighted values), forward and
    backward, counts every query-key pair: twice attention_train_flops, which counts the causal half."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from bench.mfu import attention_train_flops

    heads, dim = 4, 16
    total = 0
    for length in (7, 40):
        q, k, v = (torch.randn(1, heads, length, dim, requires_grad=True) for _ in range(3))
        with FlopCounterMode(display=False) as counter:
            out = F.softmax(q @ k.transpose(-1, -2) / dim**0.5, dim=-1) @ v
            out.sum().backward()
        total += counter.get_total_flops()
    assert total == 2 * attention_train_flops(1, heads * dim, [7, 40])
