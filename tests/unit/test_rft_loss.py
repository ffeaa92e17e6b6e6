"""ftserve's GRPO loss against TRL's GRPOTrainer._compute_loss (its defaults: loss_type "dapo", epsilon 0.2,
scale_rewards "group"), on one fixed batch of rollouts of the tiny model with LoRA: the same loss and the same
LoRA gradients within 1e-4, without and with a KL term, whether a group's prompt goes through the model once
(shared_prefix_logps, the default) or once per completion (under gradient checkpointing); and the group
advantages TRL computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from ftserve.training.methods.rft_loss import (
    GrpoConfig,
    _pass,
    backward_step,
    completion_logps,
    group_advantages,
    shared_prefix_logps,
)

CPU = torch.device("cpu")
SEED = 3
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GROUP = 4


def _lora_model(path: Path) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(SEED)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
    with torch.no_grad():  # B starts at zero; move it so the adapter (and the KL to the base) is not trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model  # type: ignore[return-value]


def _rollouts(vocab: int) -> tuple[list[tuple[list[int], list[int]]], torch.Tensor]:
    """Two prompts of different lengths, four completions each of 1-6 tokens, and their rewards."""
    g = torch.Generator().manual_seed(SEED)
    prompts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (7, 4)]
    rows = []
    for prompt in prompts:
        for k in range(GROUP):
            completion = torch.randint(5, vocab, (1 + (k * 5 + len(prompt)) % 6,), generator=g).tolist()
            rows.append((prompt, completion))
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.2, 0.2, 0.9, 0.0])
    return rows, rewards


def _grads(model: PeftModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _trl_inputs(rows: list[tuple[list[int], list[int]]], advantages: torch.Tensor, pad: int) -> dict[str, object]:
    """TRL's batch layout: prompts left-padded, completions right-padded."""
    plen = max(len(p) for p, _ in rows)
    clen = max(len(c) for _, c in rows)
    prompt_ids = torch.full((len(rows), plen), pad)
    prompt_mask = torch.zeros((len(rows), plen), dtype=torch.long)
    completion_ids = torch.full((len(rows), clen), pad)
    completion_mask = torch.zeros((len(rows), clen), dtype=torch.long)
    for r, (p, c) in enumerate(rows):
        prompt_ids[r, plen - len(p) :] = torch.tensor(p)
        prompt_mask[r, plen - len(p) :] = 1
        completion_ids[r, : len(c)] = torch.tensor(c)
        completion_mask[r, : len(c)] = 1
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
        "old_per_token_logps": None,
    }


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prompt", "row-per-prompt"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradients_equal_trls(bases_dir: Path, tmp_path: Path, beta: float, shared: bool) -> None:
    path = bases_dir / "ftserve-tiny"
    tok = AutoTokenizer.from_pretrained(path)
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    rows, rewards = _rollouts(len(tok))
    advantages = group_advantages(rewards, GROUP)

    # TRL: its trainer's own loss on the batch, with the reference log-probs it would compute (the adapter off).
    trl_model = _lora_model(path)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=GROUP,
        num_generations=GROUP,
        max_completion_length=8,
        beta=beta,
        use_cpu=True,
        report_to=[],
        bf16=False,
    )
    trainer = GRPOTrainer(
        model=trl_model,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "hi"}] * GROUP),
        processing_class=tok,
    )
    inputs = _trl_inputs(rows, advantages, pad)
    if beta:
        with torch.no_grad(), trl_model.disable_adapter():
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)  # type: ignore[list-item]
            mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)  # type: ignore[list-item]
            width = inputs["completion_ids"].shape[1]  # type: ignore[attr-defined]
            logits = trl_model(input_ids=ids, attention_mask=mask).logits[:, -width - 1 : -1]
            inputs["ref_per_token_logps"] = torch.gather(
                logits.float().log_softmax(-1),
                2,
                inputs["completion_ids"].unsqueeze(-1),  # type: ignore[attr-defined]
            ).squeeze(-1)
    trl_model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by its training_step: one step, no accumulation
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    trl_loss.backward()
    trl_grads = _grads(trl_model)

    # ftserve: the same rows, its own layout (right-padded, one pass per 3 rows).
    ours = _lora_model(path)
    ours.train()
    if not shared:  # what backward_step reads to fall back to a row per prompt
        ours.is_gradient_checkpointing = True  # type: ignore[misc]

    def reference(ids: torch.Tensor, mask: torch.Tensor, starts: list[int]) -> torch.Tensor:
        with ours.disable_adapter():
            return completion_logps(ours, ids, mask, starts)

    def backward(loss: torch.Tensor) -> float:
        loss.backward()
        return float(loss.detach())

    value = backward_step(ours, rows, advantages, GrpoConfig(beta=beta), backward, pad, CPU, 3, reference)

    assert value == pytest.approx(float(trl_loss), abs=1e-4)
    our_grads = _grads(ours)
    assert set(our_grads) == set(trl_grads) and trl_grads
    for name, grad in trl_grads.items():
        assert torch.allclose(our_grads[name], grad, atol=1e-4), name
    assert max(float(g.abs().max()) for g in trl_grads.values()) > 1e-3  # the gradients are not all ~0


def test_group_advantages_are_trls() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.2, 0.2, 0.2, 0.2])
    advantages = group_advantages(rewards, GROUP)
    first = rewards[:4]
    expected = (first - first.mean()) / (first.std() + 1e-4)  # unbiased std, as TRL's nanstd
    assert torch.allclose(advantages[:4], expected)
    assert torch.equal(advantages[4:], torch.zeros(4))  # a group that scored alike teaches nothing


def test_shared_prefix_logps_equal_full_rows(bases_dir: Path) -> None:
    """The log-probs of completions that share their prompt's keys and values are the ones of full rows, for
    prompts of different lengths, a completion of one token and rows in any order."""
    model = _lora_model(bases_dir / "ftserve-tiny")
    rows, _ = _rollouts(int(model.config.vocab_size))
    rows = [rows[5], rows[0], rows[7], rows[2], ([9, 8, 7], [11])]
    prompts = list({tuple(p): None for p, _ in rows})
    owner = [prompts.index(tuple(p)) for p, _ in rows]
    with torch.no_grad():
        ids, mask, starts, completion_mask = _pass(rows, 0, CPU)
        full = completion_logps(model, ids, mask, starts)
        shared = shared_prefix_logps(model, [list(p) for p in prompts], [c for _, c in rows], owner, 0, CPU)
    assert shared.shape == full.shape
    assert torch.allclose(shared * completion_mask, full * completion_mask, atol=1e-5)
    assert float((full * completion_mask).abs().min()) >= 0 and float(full.abs().max()) > 1.0


def test_shares_of_a_step_with_its_total_sum_to_the_step(bases_dir: Path) -> None:
    """A gang rank backpropagates its share of a step's groups over the WHOLE step's answer tokens: the shares'
    losses and gradients then add up to the one-process step's (what the gang's gradient all-reduce sums)."""
    model = _lora_model(bases_dir / "ftserve-tiny")
    model.train()
    rows, rewards = _rollouts(int(model.config.vocab_size))
    advantages = group_advantages(rewards, GROUP)
    config = GrpoConfig()

    def backward(loss: torch.Tensor) -> float:
        loss.backward()
        return float(loss.detach())

    whole = backward_step(model, rows, advantages, config, backward, 0, CPU)
    whole_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    total = sum(len(c) for _, c in rows)
    shares = [(rows[:GROUP], advantages[:GROUP]), (rows[GROUP:], advantages[GROUP:])]  # a group per rank
    values = []
    for share_rows, share_advantages in shares:
        values.append(backward_step(model, share_rows, share_advantages, config, backward, 0, CPU, total=total))
    assert sum(values) == pytest.approx(whole, rel=1e-5)
    assert abs(whole) > 1e-3  # answers of unequal lengths: the loss is not ~0
    summed = _grads(model)  # accumulated over both shares, as the all-reduce sums them
    assert set(summed) == set(whole_grads)
    for name, grad in whole_grads.items():
        assert torch.allclose(summed[name], grad, atol=1e-6, rtol=1e-4), name
    # Each share over its own tokens instead: another loss (and so other gradients) than the step's.
    own = [backward_step(model, r, a, config, lambda loss: float(loss.detach()), 0, CPU) for r, a in shares]
    assert sum(own) != pytest.approx(whole, rel=0.05)
