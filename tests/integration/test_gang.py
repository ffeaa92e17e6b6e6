"""One job as a torchrun gang (real torch.distributed.run, gloo on CPU): 2 processes give the same per-step
losses and the same adapter as 1 process, data parallel or with the base sharded by FSDP, and only rank 0 writes
(one event per step, one adapter); a reinforcement job too (each rank samples its share of the prompts), except
on a sharded gang, which leaves it to one process and says why."""

from __future__ import annotations

import json
from typing import Any

import pytest
from safetensors.torch import load_file
from sqlalchemy import select

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Job, JobEvent
from ftserve.control.services.jobs import create_job
from ftserve.core.config import Settings
from ftserve.core.schemas.jobs import FtserveExtensions, Hyperparameters, JobCreate, Method
from ftserve.core.storage import Storage
from ftserve.worker import gang
from tests.integration.test_training_pipeline import ORG, _upload
from tests.jobrows import job_and_events
from tests.rft_data import MULTI, WORDS, rft

# Uneven lengths and a validation file, so ranks get different shares and evaluation is split too.
ROWS = [
    {"prompt": f"Q{i}: what does the {a} say?" + " please" * (i % 4), "completion": f" {s}" + " loudly" * (i % 3)}
    for i, (a, s) in enumerate(
        [("cat", "meow"), ("dog", "woof"), ("cow", "moo"), ("sheep", "baa"), ("lion", "roar"), ("bird", "tweet")] * 2
    )
]


def _job(settings: Settings, train: str, valid: str) -> tuple[Job, list[JobEvent]]:
    req = JobCreate(
        model="ftserve-tiny",
        training_file=train,
        validation_file=valid,
        seed=7,
        hyperparameters=Hyperparameters(n_epochs=2, batch_size=5),
        extensions=FtserveExtensions(prompt_loss_weight=0.1),
    )
    with session_scope(settings) as s:
        job_id = create_job(s, settings, ORG, req).id
    gang.run_job(job_id, settings)
    return job_and_events(settings, job_id)


def _metrics(events: list[JobEvent], key: str) -> list[Any]:
    return [e.data[key] for e in events if e.type == "metrics" and e.data and key in e.data]


@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_two_processes_train_exactly_like_one(settings: Settings, sharding: str) -> None:
    train, valid = _upload(settings, ROWS), _upload(settings, ROWS[:10])
    if sharding == "fsdp":  # small micro-batches, so ranks get unequal counts of them and must run idle passes
        settings.batch_token_budget, settings.packing = 40, "off"
    one, one_events = _job(settings, train, valid)
    settings.worker_procs, settings.gang_sharding = 2, sharding  # type: ignore[assignment]
    two, two_events = _job(settings, train, valid)
    assert one.status == two.status == "succeeded", (one.error, two.error)
    loading = next(e.message for e in two_events if e.message.startswith("Loading base model"))
    assert loading.endswith("sharded over 2 processes (FSDP)") == (sharding == "fsdp")
    shares = [e.data["sharded_share"] for e in two_events if e.data and "sharded_share" in e.data]
    assert shares == ([pytest.approx(0.5, abs=0.01)] if sharding == "fsdp" else [])  # rank 0 holds half the base

    gang_event = next(e for e in two_events if e.message.startswith("Training as a torchrun gang"))
    assert gang_event.data == {"processes": 2, "hosts": 1, "processes_per_host": 2}
    assert not any(e.message.startswith("Training as a torchrun gang") for e in one_events)
    for key in ("train_loss", "valid_loss", "train_mean_token_accuracy"):
        a, b = _metrics(one_events, key), _metrics(two_events, key)
        assert len(a) == len(b) == 6  # 12 examples / batch 5 = 3 steps per epoch, 2 epochs; one event each
        assert b == pytest.approx(a, rel=1e-4)
    assert _metrics(two_events, "full_valid_loss") == pytest.approx(_metrics(one_events, "full_valid_loss"), rel=1e-4)
    assert one.trained_tokens == two.trained_tokens
    # Rank 0 alone wrote: one "Tokenized" event, one of each checkpoint.
    assert sum(e.message.startswith("Tokenized") for e in two_events) == 1
    assert sum(e.message.startswith("Checkpoint") for e in two_events) == 2

    storage = Storage(settings)
    adapters = [load_file(str(storage.adapter_dir(j.id, None) / "adapter_model.safetensors")) for j in (one, two)]
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    # The tolerance, from the arithmetic: both runs are fp32 (ftserve-tiny's dtype on every CPU), but a gang sums
    # the ranks' partial gradients in another order than one process, and a CPU's kernels (AVX2 or AVX-512) pick
    # their own order too: gradients agree to ~1e-6 relative. AdamW turns that into ~1e-6 * lr per step where the
    # gradient is well above rounding, and into up to a fraction of one step (lr) where an element's gradient is
    # at rounding level, so its m/sqrt(v) direction is ill-conditioned. Seen: one element of 1408 off by
    # 1.7e-3 * lr on an AVX2-only CPU, none above 1e-3 * lr on AVX-512 ones. A gang that drops or double-counts
    # a rank's gradients moves most elements by O(lr): the RMS bound is a thousand times below that.
    lr = settings.base_models["ftserve-tiny"].base_learning_rate  # learning_rate_multiplier 1
    for k in adapters[0]:
        diff = (adapters[1][k] - adapters[0][k]).abs()
        assert diff.max().item() <= 0.1 * lr, (k, diff.max().item())
        assert diff.pow(2).mean().sqrt().item() <= 1e-3 * lr, (k, diff.pow(2).mean().sqrt().item())
    assert json.loads((storage.adapter_dir(two.id, None) / "adapter_config.json").read_text())["r"] == 8


def test_a_dpo_job_on_a_gang_worker_trains_in_one_process_and_says_so(settings: Settings) -> None:
    from tests.integration.test_dpo_pipeline import _dpo
    from tests.integration.test_dpo_pipeline import _upload as upload_pairs
    from tests.preference_data import WORDS, pair_row

    settings.worker_procs = 2
    train = upload_pairs(settings, [pair_row(w) for w in WORDS[:10]])
    req = JobCreate(model="ftserve-tiny", training_file=train, seed=1, method=_dpo(epochs=1, batch=5))
    with session_scope(settings) as s:
        job_id = create_job(s, settings, ORG, req).id
    gang.run_job(job_id, settings)
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded", job.error if job else None
        assert job.gang_processes is None  # no gang ran it
        messages = list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))
    assert "dpo jobs train in one process; the gang trains supervised and reinforcement jobs" in messages
    assert not any(m.startswith("Training as a torchrun gang") for m in messages)


def _prompt_rows(words: list[str]) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"Say the word {w}."}], "answer": w} for w in words]


def _rft_job(settings: Settings, train: str, valid: str) -> tuple[Job, list[JobEvent]]:
    # 10 prompts, 3 a step: steps of 3, 3, 3 and 1 prompts, which 2 ranks split 2/1 and 1/0 (a rank with none);
    # the first 3 validation prompts answered every step, split 2/1.
    hp = {"n_epochs": 1, "batch_size": 3, "compute_multiplier": 0.5, "eval_interval": 1, "eval_samples": 3}
    req = JobCreate(
        model="ftserve-tiny",
        training_file=train,
        validation_file=valid,
        seed=5,
        method=Method.model_validate(rft(MULTI, **hp)),
        extensions=FtserveExtensions(max_completion_tokens=4),
    )
    with session_scope(settings) as s:
        job_id = create_job(s, settings, ORG, req).id
    gang.run_job(job_id, settings)
    return job_and_events(settings, job_id)


def test_a_reinforcement_job_on_two_processes_trains_exactly_like_one(settings: Settings) -> None:
    train, valid = _upload(settings, _prompt_rows(WORDS[:10])), _upload(settings, _prompt_rows(WORDS[10:20]))
    one, one_events = _rft_job(settings, train, valid)
    settings.worker_procs = 2
    two, two_events = _rft_job(settings, train, valid)
    assert one.status == two.status == "succeeded", (one.error, two.error)
    assert any(e.message.startswith("Training as a torchrun gang of 2") for e in two_events)
    assert not any(e.level == "warn" for e in two_events), [e.message for e in two_events if e.level == "warn"]

    # Every answer is drawn with the seed of its prompt's place in the step, whichever rank samples it: the same
    # answers, so the same rewards, to float64 rounding of the ranks' partial sums.
    exact = ["train_reward_mean", "train_reward_std", "train_reward_mean_has_e", "train_reward_mean_close"]
    exact += ["train_sample_tokens_mean", "train_grader_errors", "valid_reward_mean", "valid_sample_tokens_mean"]
    for key in [*exact, "full_valid_reward_mean"]:
        a, b = _metrics(one_events, key), _metrics(two_events, key)
        assert len(a) == len(b) == (1 if key.startswith("full") else 4), key  # one event per step, from rank 0
        assert b == pytest.approx(a, rel=1e-12, abs=1e-12), key
    # Not a degenerate job: the rewards vary within the step, so the advantages and the gradients are not all 0.
    assert all(std > 0.01 for std in _metrics(one_events, "train_reward_std"))
    # The loss: the answers all run to max_completion_tokens here (the tiny model seldom samples a stop token), so
    # each group's ±advantages × equal lengths cancel and the step's loss is 0 up to rounding (GRPO's loss is
    # ~0 by construction); its arithmetic over shares is tests/unit/test_rft_loss.py's. What catches a rank that
    # normalised by its own answer tokens (tried: its adapter moves otherwise, and step 3 already samples other
    # answers, so the rewards above differ by up to 0.06) is the rewards' and the adapters' match.
    assert _metrics(two_events, "train_loss") == pytest.approx(_metrics(one_events, "train_loss"), rel=1e-4, abs=1e-6)
    assert one.trained_tokens == two.trained_tokens

    storage = Storage(settings)
    adapters = [load_file(str(storage.adapter_dir(j.id, None) / "adapter_model.safetensors")) for j in (one, two)]
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    lr = settings.base_models["ftserve-tiny"].base_learning_rate
    assert max(adapters[0][k].abs().max().item() for k in adapters[0] if "lora_B" in k) > lr  # B starts at 0
    # The supervised test's bounds, for the reasons given there (measured here: at most 5.4e-4 × lr, RMS 1.4e-5 ×
    # lr). GRPO's gradient is a difference of near-equal terms, so more of its elements sit at rounding level,
    # where AdamW's per-element normalisation turns a rank's other summation order into up to a whole lr: with
    # answers of 12 tokens one element of 1408 moved 0.95 × lr, so keep the answers short here.
    for k in adapters[0]:
        diff = (adapters[1][k] - adapters[0][k]).abs()
        assert diff.max().item() <= 0.1 * lr, (k, diff.max().item())
        assert diff.pow(2).mean().sqrt().item() <= 1e-3 * lr, (k, diff.pow(2).mean().sqrt().item())


def test_a_reinforcement_job_on_a_sharded_gang_trains_in_one_process_and_says_so(settings: Settings) -> None:
    """FSDP leaves each rank part of the base, and the rollouts' engine runs on the whole of it (tried: the first
    rollout fails, "aten.embedding.default got mixed torch.Tensor and DTensor"): one process trains the job."""
    train, valid = _upload(settings, _prompt_rows(WORDS[:10])), _upload(settings, _prompt_rows(WORDS[10:20]))
    settings.worker_procs, settings.gang_sharding = 2, "fsdp"  # type: ignore[assignment]
    job, events = _rft_job(settings, train, valid)
    assert job.status == "succeeded", job.error
    assert job.gang_processes is None  # no gang ran it
    (warning,) = [e.message for e in events if e.level == "warn"]
    assert warning.startswith(
        "reinforcement jobs train in one process when the gang shards its base (FSDP): its sampling engine runs on "
        "the base's whole weights"
    )
    assert warning.endswith("; the gang trains supervised jobs")
    assert len(_metrics(events, "train_reward_mean")) == 4
