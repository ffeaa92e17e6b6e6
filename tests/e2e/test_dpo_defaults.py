"""DPO's "auto" hyperparameters work (issue 28): SFT teaches SmolLM2 a JSON label, then a DPO job from the SFT
model with every hyperparameter left to "auto" learns a preferred style of it (the upper-case label) without
breaking the format, through a real `ftserve up` with the official client. Measured: docs/training.md."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import fmean

import pytest
from openai import OpenAI
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.datasets.formats import Message, Preference
from ftserve.models.bases import base_path
from ftserve.training.preference import tokenize_pair
from tests.e2e.conftest import client_for, wait_job
from tests.label_data import judge, pair_rows, reply, sft_rows, split
from tests.servers import Service

SMOL = "smollm2-135m-instruct"
SFT, PAIRS, HELD = split(sft=8, dpo=4, held=4)  # 40 SFT lines, 20 pairs, 20 held-out prompts
SFT_HP = {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 2}  # 80 steps: the label format, quickly


def _upload(client: OpenAI, path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return client.files.create(file=path.open("rb"), purpose="fine-tune").id


def _answers(client: OpenAI, model: str) -> list[str]:
    """Greedy chat answers to the held-out prompts (sent at once: the server batches them)."""

    def ask(prompt: str) -> str:
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0
        )
        return out.choices[0].message.content or ""

    with ThreadPoolExecutor(len(HELD)) as pool:
        return list(pool.map(ask, [p for p, _ in HELD]))


def _logps(client: OpenAI, tok: PreTrainedTokenizerBase, model: str, preferred: bool) -> list[float]:
    """Each held-out prompt's summed log-prob of the preferred (or the other) reply, its end-of-turn included,
    scored by the server (echo + logprobs over exactly the tokens DPO trains on; one request for all)."""
    pairs = [
        tokenize_pair(tok, Preference((Message("user", p),), reply(label, True), reply(label, False)))
        for p, label in HELD
    ]
    rows = [pair.prompt + (pair.chosen if preferred else pair.rejected) for pair in pairs]
    scored = client.completions.create(model=model, prompt=rows, echo=True, logprobs=1, max_tokens=0, temperature=0)
    out = []
    for choice, pair in zip(sorted(scored.choices, key=lambda c: c.index), pairs, strict=True):
        lp = choice.logprobs
        assert lp is not None and lp.token_logprobs is not None
        out.append(sum(x for x in lp.token_logprobs[len(pair.prompt) :] if x is not None))
    return out


@pytest.mark.slow
def test_sft_then_dpo_with_default_hyperparameters_keeps_the_format_and_learns_the_preference(
    smollm2_embedded: Service, bases_dir: Path, tmp_path: Path
) -> None:
    client = client_for(smollm2_embedded, timeout=600)
    tok = AutoTokenizer.from_pretrained(str(base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), SMOL)))
    sft = client.fine_tuning.jobs.create(
        model=SMOL, training_file=_upload(client, tmp_path / "sft.jsonl", sft_rows(SFT)), suffix="label", seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": SFT_HP}},
    )  # fmt: skip
    sft, _ = wait_job(client, sft.id, timeout=600)
    assert sft.status == "succeeded" and sft.fine_tuned_model, sft.error
    judged = [judge(a, label) for a, (_, label) in zip(_answers(client, sft.fine_tuned_model), HELD, strict=True)]
    assert sum(v for v, _, _ in judged) >= 0.9 * len(HELD) and not any(s for _, _, s in judged)
    pref_before = _logps(client, tok, sft.fine_tuned_model, True)
    other_before = _logps(client, tok, sft.fine_tuned_model, False)

    dpo = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model, training_file=_upload(client, tmp_path / "pairs.jsonl", pair_rows(PAIRS)),
        suffix="upper", seed=0, method={"type": "dpo"},
    )  # fmt: skip
    dpo, _ = wait_job(client, dpo.id, timeout=600)
    assert dpo.status == "succeeded" and dpo.fine_tuned_model, dpo.error
    events = list(client.fine_tuning.jobs.list_events(dpo.id, limit=100))
    assert not [e.message for e in events if e.level == "warn"]  # the defaults do not collapse the model

    answers = _answers(client, dpo.fine_tuned_model)
    judged = [judge(a, label) for a, (_, label) in zip(answers, HELD, strict=True)]
    assert sum(v for v, _, _ in judged) >= 0.9 * len(HELD), answers  # still one JSON label from the set
    pref_after = _logps(client, tok, dpo.fine_tuned_model, True)
    other_after = _logps(client, tok, dpo.fine_tuned_model, False)
    # The preferred style gained probability on prompts DPO never saw, and now beats the other reply more often.
    assert fmean(pref_after) > fmean(pref_before) + 1.0, (fmean(pref_before), fmean(pref_after))
    gap_before = [p - o for p, o in zip(pref_before, other_before, strict=True)]
    gap_after = [p - o for p, o in zip(pref_after, other_after, strict=True)]
    assert fmean(gap_after) > fmean(gap_before) + 1.0, (fmean(gap_before), fmean(gap_after))
