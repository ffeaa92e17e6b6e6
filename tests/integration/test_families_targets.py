"""The target-module table against transformers' own architectures, the fallback, and the override."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from ftserve.core.errors import TrainingError
from ftserve.models.families import TARGET_MODULES, choose_target_modules

_TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 64,
    "pad_token_id": None,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "n_embd": 32,
    "n_layer": 1,
    "n_head": 4,
    "ffn_dim": 64,
    "word_embed_proj_dim": 32,
}


def _tiny(model_type: str) -> PreTrainedModel:
    config = AutoConfig.for_model(model_type, **_TINY)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _linear_leaves(model: PreTrainedModel) -> set[str]:
    head = model.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Conv1d) or type(m).__name__ == "Conv1D"
        if m is not head and name
    }


@pytest.mark.parametrize("model_type", sorted(TARGET_MODULES))
def test_each_row_names_exactly_the_linear_layers_except_the_head(model_type: str) -> None:
    model = _tiny(model_type)
    choice = choose_target_modules(model)
    assert not choice.fallback and choice.modules == list(TARGET_MODULES[model_type])
    assert set(choice.modules) == _linear_leaves(model)
    head = [n for n, m in model.named_modules() if m is model.get_output_embeddings()]
    assert not any(n.endswith(k) for n in head for k in choice.modules)
    assert choice.fan_in_fan_out == (model_type == "gpt2")  # GPT-2's Conv1D stores weights transposed


def test_unknown_architecture_falls_back_to_every_linear_layer_but_the_head() -> None:
    model = _tiny("opt")
    choice = choose_target_modules(model)
    assert choice.fallback
    assert choice.modules == ["fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"]
    assert "'opt' has no entry" in choice.message and "lm_head" not in choice.modules


def test_job_override_is_used_and_checked() -> None:
    model = _tiny("llama")
    choice = choose_target_modules(model, ["q_proj", "v_proj"])
    assert choice.modules == ["q_proj", "v_proj"] and "extensions.target_modules" in choice.message
    # Asking for the head or embeddings is allowed when it is explicit.
    assert choose_target_modules(model, ["lm_head"]).modules == ["lm_head"]
    with pytest.raises(TrainingError) as err:
        choose_target_modules(model, ["q_proj", "query_key_value"])
    assert err.value.code == "invalid_target_modules" and "query_key_value" in err.value.message


class _Toy(torch.nn.Module):
    """An unknown architecture whose head's path ends like a body layer's ("proj")."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="toy")
        self.body = torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 4)})
        self.head = torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 4)})

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head["proj"]


def test_fallback_uses_full_paths_when_a_short_name_would_also_match_the_head() -> None:
    choice = choose_target_modules(_Toy())
    assert choice.fallback and choice.modules == ["body.proj"]
