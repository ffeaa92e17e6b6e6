"""DPO jobs through the worker's pipeline in-process (SQLite, real storage): its metrics, checkpoints and
result CSV; a reference that is the starting model (base, or the fine-tuned model a job continues);
starting from a fine-tuned model in general; and the failures a user must see clearly."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import File, FineTunedModel, Job, JobEvent
from ftserve.control.services import catalog
from ftserve.control.services.files import create_upload
from ftserve.control.services.jobs import create_job
from ftserve.core.config import Settings
from ftserve.core.errors import InvalidRequest
from ftserve.core.schemas.jobs import FtserveExtensions, JobCreate, Method
from ftserve.core.storage import Storage
from ftserve.training.methods.dpo_health import CHOSEN_DROP
from ftserve.training.methods.dpo_reference import REFERENCE_FILE
from ftserve.worker.gang import run_job
from tests.jobrows import job_and_events
from tests.preference_data import STYLE, WORDS, pair_row, question

ORG = "personal"


def _upload(settings: Settings, rows: list[dict[str, Any]]) -> str:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    async def go() -> str:
        with session_scope(settings) as s:
            return (await create_upload(s, settings, ORG, "data.jsonl", "fine-tune", chunks())).id

    return asyncio.run(go())


def _create(settings: Settings, **kw: Any) -> str:
    with session_scope(settings) as s:
        return create_job(s, settings, ORG, JobCreate(**kw)).id


def _run(settings: Settings, **kw: Any) -> tuple[Job, list[JobEvent]]:
    job_id = _create(settings, **kw)
    run_job(job_id, settings)
    return job_and_events(settings, job_id)


def _dpo(epochs: int = 2, batch: int = 4, **hp: Any) -> Method:
    return Method.model_validate(
        {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": epochs, "batch_size": batch, **hp}}}
    )


def _metrics(events: list[JobEvent]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == "metrics" and e.data]


def test_a_dpo_job_reports_rewards_checkpoints_and_its_csv(settings: Settings) -> None:
    train = _upload(settings, [pair_row(w) for w in WORDS[:12]])
    valid = _upload(settings, [pair_row(w) for w in WORDS[12:22]])
    job, events = _run(
        settings, model="ftserve-tiny", training_file=train, validation_file=valid, seed=1, method=_dpo()
    )
    assert job.status == "succeeded", job.error
    assert job.method == "dpo" and job.hyperparameters["beta"] == 0.1  # "auto"
    steps = _metrics(events)
    assert [m["step"] for m in steps] == list(range(1, 7))  # 12 pairs / 4 = 3 steps x 2 epochs
    # Step 1 runs the starting model itself: every reward is exactly 0 and the loss is log 2.
    assert steps[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert steps[0]["train_reward_margin"] == pytest.approx(0, abs=1e-6)
    assert steps[-1]["train_loss"] < steps[0]["train_loss"] and steps[-1]["train_reward_margin"] > 0
    for m in steps:
        for key in ("chosen_reward", "rejected_reward", "reward_accuracy", "reward_margin", "loss"):
            assert isinstance(m[f"train_{key}"], float) and isinstance(m[f"valid_{key}"], float)
        assert m["train_chosen_reward"] - m["train_rejected_reward"] == pytest.approx(m["train_reward_margin"])
    assert [m["step"] for m in steps if "full_valid_reward_margin" in m] == [3, 6]
    assert steps[-1]["full_valid_reward_accuracy"] > 0.5  # held-out pairs: the preferred reply now scores higher
    assert not [e.message for e in events if e.level == "warn"]  # learning a style is not collapsing
    messages = [e.message for e in events]
    assert any(m.startswith("Tokenized 12 preference pairs") for m in messages)
    assert any(m.startswith("Computed reference log-probs of 22 preference pairs") for m in messages)
    assert "reward margin=" in next(e.message for e in events if e.type == "metrics")
    assert (Storage(settings).job_dir(job.id) / REFERENCE_FILE).is_file()
    with session_scope(settings) as s:
        result = s.get(File, job.result_files[0])
        assert result is not None
        rows = list(csv.DictReader(io.StringIO(Storage(settings).file_path(result.id).read_text())))
        ckpts = s.scalars(select(FineTunedModel.id).where(FineTunedModel.job_id == job.id)).all()
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert float(rows[-1]["train_reward_margin"]) == pytest.approx(steps[-1]["train_reward_margin"])
    assert rows[-1]["valid_reward_accuracy"] != "" and rows[0]["train_accuracy"] != ""
    assert sorted(ckpts) == sorted([job.fine_tuned_model, f"{job.fine_tuned_model}:ckpt-step-3",
                                    f"{job.fine_tuned_model}:ckpt-step-6"])  # fmt: skip


def test_sft_then_dpo_from_its_model_keeps_the_base_and_the_adapter_shape(settings: Settings) -> None:
    sft_rows = [
        {"messages": [{"role": "user", "content": f"Please repeat the word {w}."}, {"role": "assistant", "content": w}]}
        for w in WORDS[:12]
    ]
    sft, _ = _run(
        settings,
        model="ftserve-tiny",
        training_file=_upload(settings, sft_rows),
        suffix="sft",
        seed=2,
        hyperparameters={"n_epochs": 2, "batch_size": 4},
        extensions=FtserveExtensions(lora_rank=4, lora_alpha=8),
    )
    assert sft.status == "succeeded" and sft.fine_tuned_model
    dpo, events = _run(
        settings, model=sft.fine_tuned_model, training_file=_upload(settings, [pair_row(w) for w in WORDS[:12]]),
        suffix="dpo", seed=2, method=_dpo(epochs=1),
    )  # fmt: skip
    assert dpo.status == "succeeded", dpo.error
    assert dpo.fine_tuned_model == f"ft:ftserve-tiny:{ORG}:dpo:{dpo.id.removeprefix('ftjob-')}"
    with session_scope(settings) as s:
        assert catalog.resolve(s, settings, ORG, dpo.fine_tuned_model).base == "ftserve-tiny"
    described = next(e.data for e in events if e.message.startswith("Hyperparameters"))
    assert described is not None and (described["lora_rank"], described["lora_alpha"]) == (4, 8.0)
    assert "prompt_loss_weight" not in described
    # The reference is the SFT model, not the base: the first step's rewards are exactly zero.
    first = _metrics(events)[0]
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert any(e.message == f"Starting from fine-tuned model {sft.fine_tuned_model}" for e in events)


def test_bad_combinations_are_refused_at_creation(settings: Settings) -> None:
    prefs = _upload(settings, [pair_row(w) for w in WORDS[:12]])
    sft_file = _upload(settings, [{"prompt": f"Say {w}:", "completion": f" {w}"} for w in WORDS[:12]])
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"training_file": sft_file, "method": _dpo()}, "training_file", "invalid_file_format"),
        ({"training_file": prefs}, "training_file", "invalid_file_format"),
        ({"training_file": prefs, "method": _dpo(), "validation_file": sft_file}, "validation_file",
         "invalid_validation_file"),
        ({"training_file": prefs, "method": Method(type="reinforcement")}, "training_file", "invalid_file_format"),
        ({"training_file": prefs, "method": _dpo(), "extensions": FtserveExtensions(prompt_loss_weight=0.1)},
         "extensions.prompt_loss_weight", "invalid_extensions"),
        ({"training_file": prefs, "method": Method.model_validate({"type": "dpo", "supervised": {}})},
         "method.supervised", "invalid_value"),
        ({"training_file": prefs, "method": _dpo(), "hyperparameters": {"n_epochs": 5}}, "hyperparameters",
         "invalid_value"),
    ]  # fmt: skip
    for kw, param, code in cases:
        with pytest.raises(InvalidRequest) as err:
            _create(settings, model="ftserve-tiny", **kw)
        assert (err.value.param, err.value.code) == (param, code), (kw, err.value.message)
    with session_scope(settings) as s:
        assert s.scalars(select(Job)).all() == []


def test_continuing_a_model_refuses_a_new_lora_shape_and_fails_clearly_once_it_is_gone(settings: Settings) -> None:
    prefs = _upload(settings, [pair_row(w) for w in WORDS[:12]])
    first, _ = _run(settings, model="ftserve-tiny", training_file=prefs, seed=3, method=_dpo(epochs=1))
    assert first.status == "succeeded" and first.fine_tuned_model
    with pytest.raises(InvalidRequest) as err:
        _create(
            settings, model=first.fine_tuned_model, training_file=prefs, method=_dpo(),
            extensions=FtserveExtensions(lora_rank=16),
        )  # fmt: skip
    assert (err.value.param, err.value.code) == ("extensions.lora_rank", "invalid_extensions")
    # A checkpoint's adapter files are gone (rotated out) when the job starts: it fails, naming the model.
    ckpt = f"{first.fine_tuned_model}:ckpt-step-3"
    job_id = _create(settings, model=ckpt, training_file=prefs, method=_dpo())
    shutil.rmtree(Storage(settings).adapter_dir(first.id, 3))
    run_job(job_id, settings)
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.error is not None
        assert (job.error["code"], job.error["param"]) == ("model_not_found", "model") and ckpt in job.error["message"]
    # The starting model is deleted while the next job waits in the queue: that job fails, naming the model.
    job_id = _create(settings, model=first.fine_tuned_model, training_file=prefs, method=_dpo())
    with session_scope(settings) as s:
        catalog.delete(s, settings, ORG, first.fine_tuned_model)
    run_job(job_id, settings)
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.error is not None
        assert (job.error["code"], job.error["param"]) == ("model_not_found", "model")
        assert first.fine_tuned_model in job.error["message"]


def test_tools_on_a_template_without_them_are_rendered_in_ftserve_format(settings: Settings) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    rows = [pair_row(w) for w in WORDS[:12]]
    rows[4]["input"] = {**rows[4]["input"], "tools": tools}  # type: ignore[dict-item]
    job, _ = _run(settings, model="ftserve-tiny", training_file=_upload(settings, rows), method=_dpo())
    assert job.status == "succeeded", job.error


def test_a_dpo_job_that_breaks_its_starting_model_warns(settings: Settings) -> None:
    # SFT teaches the preferred replies themselves; DPO from that model at 10x the tiny base's rate then wrecks
    # them (measured: their token accuracy 0.83 -> 0.17-0.33, their log-prob 20-50 nats below the start).
    sft_rows = [
        {"messages": [{"role": "user", "content": question(w)}, {"role": "assistant", "content": f"{STYLE} {w}"}]}
        for w in WORDS[:24]
    ]
    sft, _ = _run(settings, model="ftserve-tiny", training_file=_upload(settings, sft_rows), seed=2,
                  hyperparameters={"n_epochs": 8, "batch_size": 4})  # fmt: skip
    assert sft.status == "succeeded", sft.error
    pairs = _upload(settings, [pair_row(w) for w in WORDS[:24]])
    job, events = _run(settings, model=sft.fine_tuned_model, training_file=pairs, seed=0,
                       method=_dpo(epochs=1, batch=1, learning_rate_multiplier=10.0))  # fmt: skip
    assert job.status == "succeeded", job.error  # a warning, not a failure: the user decides
    warnings = [e for e in events if e.level == "warn"]
    assert len(warnings) == 1, [e.message for e in warnings]
    data = warnings[0].data
    assert data is not None and data["warning"] == "dpo_collapse" and data["chosen_logratio"] <= -CHOSEN_DROP
    assert warnings[0].message.startswith(f"Step {data['step']}: DPO may be breaking the model")
    # The same chain with the default hyperparameters stays quiet.
    _, quiet = _run(settings, model=sft.fine_tuned_model, training_file=pairs, seed=0, method=_dpo(epochs=1))
    assert not [e.message for e in quiet if e.level == "warn"]
