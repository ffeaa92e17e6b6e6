"""DPO's packed rows equal two plain forwards per pair (log-probs and LoRA gradients, both attention kernels),
and the reference log-probs a resumed job recomputes are those of its starting model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from ftserve.core.datasets.formats import Message, Preference
from ftserve.models.tiny import build_tokenizer
from ftserve.training.methods import dpo_reference
from ftserve.training.methods.dpo_rows import build_rows, row_logps
from ftserve.training.preference import PreferencePair, fit_pair, tokenize_pair

CPU = torch.device("cpu")


def _model(bases_dir: Path, attn: str = "sdpa", seed: int = 0) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(
        bases_dir / "ftserve-tiny", dtype=torch.float32, attn_implementation=attn
    )
    torch.manual_seed(seed)
    # Random B as well as A, so the adapter changes the outputs (peft's default B = 0 would not).
    config = LoraConfig(
        r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"], init_lora_weights=False
    )
    return get_peft_model(base, config)  # type: ignore[return-value]


def _pairs(tok: PreTrainedTokenizerBase) -> list[PreferencePair]:
    rows = [("Say red, please.", "Sure! red", "red"), ("Name an animal", "A cat.", "dog dog dog dog"),
            ("What is one plus two?", "three", "It is three, I think.")]  # fmt: skip
    return [
        tokenize_pair(tok, Preference((Message("system", "Be brief."), Message("user", q)), good, bad))
        for q, good, bad in rows
    ]


def _two_forwards(model: PeftModel, pair: PreferencePair) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's way: [prompt, chosen] and [prompt, rejected] as two sequences, reply tokens' log-probs summed."""
    out = []
    for reply in (pair.chosen, pair.rejected):
        ids = torch.tensor([pair.prompt + reply])
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        token_logps = logps.gather(1, ids[0, 1:, None])[:, 0]
        out.append(token_logps[len(pair.prompt) - 1 :].sum())
    return out[0], out[1]


def _grads(model: PeftModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("cap", [10_000, 60])  # all pairs in one row; a row per pair
def test_packed_rows_equal_two_forwards_per_pair(bases_dir: Path, attn: str, cap: int) -> None:
    tok = build_tokenizer()
    model = _model(bases_dir, attn)
    pairs = _pairs(tok)
    rows = build_rows(pairs, [0, 1, 2], cap)
    assert len(rows) == (1 if cap > 1000 else 3)
    assert sum(r.tokens for r in rows) == sum(len(p) for p in pairs)  # each prompt once

    chosen, rejected = torch.zeros(3), torch.zeros(3)
    total = torch.zeros(())
    for row in rows:
        logps = row_logps(model, row, CPU)
        chosen[row.pairs], rejected[row.pairs] = logps.chosen.detach(), logps.rejected.detach()
        total = total + (logps.chosen - 0.5 * logps.rejected).sum()
    total.backward()
    packed_grads = _grads(model)
    model.zero_grad()

    expected = torch.zeros(())
    for i, pair in enumerate(pairs):
        c, r = _two_forwards(model, pair)
        assert float(chosen[i]) == pytest.approx(float(c), abs=1e-4)
        assert float(rejected[i]) == pytest.approx(float(r), abs=1e-4)
        expected = expected + c - 0.5 * r
    expected.backward()
    for name, grad in _grads(model).items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_truncation_keeps_the_prompt_and_cuts_the_replies(bases_dir: Path) -> None:
    pair = PreferencePair([1, 2, 3], [4, 5, 6, 7], [8, 9])
    assert fit_pair(pair, 10) is pair
    assert fit_pair(pair, 5) == PreferencePair([1, 2, 3], [4, 5], [8, 9])
    assert fit_pair(pair, 3) is None  # no room for a single reply token


@pytest.mark.parametrize("continued", [False, True])
def test_a_resumed_job_recomputes_the_reference_of_its_starting_model(
    bases_dir: Path, tmp_path: Path, continued: bool
) -> None:
    tok = build_tokenizer()
    pairs = _pairs(tok)
    model = _model(bases_dir, seed=1)
    start: Path | None = None
    if continued:  # the job continues a fine-tuned model: these (random) weights are its adapter
        start = tmp_path / "start"
        model.save_pretrained(str(start))
    else:  # a fresh adapter from a base: LoRA B = 0, so the starting model is the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.zeros_(p)
    fresh = dpo_reference.compute(model, pairs, 10_000, CPU)
    with torch.no_grad():  # "training" moves every LoRA weight
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    moved = dpo_reference.compute(model, pairs, 10_000, CPU)
    assert not torch.allclose(moved, fresh, atol=1e-3)
    with dpo_reference.starting_model(model, start):
        again = dpo_reference.compute(model, pairs, 10_000, CPU)
    torch.testing.assert_close(again, fresh, atol=1e-4, rtol=1e-5)
    # ...and the trained weights are back afterwards.
    torch.testing.assert_close(dpo_reference.compute(model, pairs, 10_000, CPU), moved)


def test_saved_reference_is_used_only_for_the_same_data(tmp_path: Path) -> None:
    a = [PreferencePair([1, 2], [3], [4])]
    b = [PreferencePair([1, 2], [3], [5])]
    path = tmp_path / "ref.pt"
    dpo_reference.save(path, dpo_reference.fingerprint(a, []), torch.ones(1, 2), torch.zeros(0, 2))
    loaded = dpo_reference.load(path, dpo_reference.fingerprint(a, []))
    assert loaded is not None and torch.equal(loaded[0], torch.ones(1, 2))
    assert dpo_reference.load(path, dpo_reference.fingerprint(b, [])) is None
    assert dpo_reference.load(tmp_path / "missing.pt", "x") is None


def test_tools_are_rendered_by_the_template_or_in_ftserve_own_format() -> None:
    from ftserve.models.tiny import CHAT_TEMPLATE

    tools = ({"type": "function", "function": {"name": "lookup_weather", "parameters": {"type": "object"}}},)
    example = Preference((Message("user", "Weather in Oslo?"),), "It is cold.", "No idea.", tools)
    tok = build_tokenizer()
    # The tiny model's ChatML template ignores tools: ftserve's own format puts them in a system turn.
    pair = tokenize_pair(tok, example)
    assert "<tools>" in tok.decode(pair.prompt) and "lookup_weather" in tok.decode(pair.prompt)
    tok.chat_template = "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}" + (
        CHAT_TEMPLATE
    )
    pair = tokenize_pair(tok, example)
    prompt = tok.decode(pair.prompt)
    assert "Tools: " in prompt and "lookup_weather" in prompt and "<tools>" not in prompt
    assert tok.decode(pair.chosen) == "It is cold.<|im_end|>"
