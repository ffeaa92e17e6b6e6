"""Reliability building blocks on a real SQLite DB: claim is exactly-once, the reaper, resume points, disk check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Checkpoint, FineTunedModel, JobEvent
from ftserve.control.services import catalog
from ftserve.control.services.jobs import cancel_job
from ftserve.control.services.reaper import reap_once
from ftserve.control.services.training_store import TrainingStore
from ftserve.core.config import Settings
from ftserve.core.errors import TrainingError
from ftserve.core.ids import new_id, now
from ftserve.core.storage import COMPLETE, Storage
from ftserve.models.bases import base_path
from ftserve.training import resume
from ftserve.training.export import save_adapter
from ftserve.training.pipeline import _check_disk
from ftserve.training.trainer import LoraTrainer
from tests.jobrows import job_row, make_job


def test_a_duplicate_delivery_is_a_no_op(settings: Settings) -> None:
    job_id = make_job(settings, "queued")
    assert TrainingStore(settings, job_id, "worker-a").claim() is not None
    assert TrainingStore(settings, job_id, "worker-b").claim() is None
    job = job_row(settings, job_id)
    assert job.lease_owner == "worker-a" and job.attempts == 1


def test_reaper_requeues_then_fails_worker_lost(settings: Settings) -> None:
    settings.max_job_attempts = 2
    expired = time.time() - 1
    retry = make_job(settings, "running", lease_owner="gone", lease_expires_at=expired, attempts=1)
    give_up = make_job(
        settings, "running", lease_owner="gone", lease_expires_at=expired, attempts=3, worker_losses=1
    )  # claimed 3 times (a pause and resume is a claim too), its worker lost once already
    alive = make_job(settings, "running", lease_owner="busy", lease_expires_at=time.time() + 60, attempts=1)
    stale = make_job(settings, "queued", enqueued_at=time.time() - settings.requeue_after_seconds - 5)
    report = reap_once(settings)
    assert report.requeued == [retry] and report.failed == [give_up] and report.resent == [stale]
    assert job_row(settings, retry).status == "queued" and job_row(settings, retry).lease_owner is None
    lost = job_row(settings, give_up)
    assert lost.status == "failed" and lost.error is not None and lost.error["code"] == "worker_lost"
    assert job_row(settings, alive).status == "running"
    with session_scope(settings) as s:
        levels = {e.level for e in s.query(JobEvent).filter(JobEvent.job_id.in_([retry, give_up]))}
    assert levels == {"warn", "error"}
    assert reap_once(settings).requeued == []  # a second pass changes nothing


def test_resume_point_ignores_half_written_checkpoints(settings: Settings, bases_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(base_path(settings, "ftserve-tiny")))
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer = LoraTrainer(peft, torch.device("cpu"), lr=1e-3, total_steps=10)
    storage = Storage(settings)
    job_id = "ftjob-resume"
    save_adapter(peft, storage.adapter_dir(job_id, 3), resume.trainer_state(trainer, resume.Progress(step=3, epoch=1)))
    save_adapter(peft, storage.adapter_dir(job_id, 6), resume.trainer_state(trainer, resume.Progress(step=6, epoch=2)))
    (storage.adapter_dir(job_id, 6) / COMPLETE).unlink()  # as if the worker died while writing it
    save_adapter(peft, storage.adapter_dir(job_id, 9))  # an adapter without trainer state cannot be resumed from
    point = resume.latest(storage, job_id)
    assert point is not None and point.progress.step == 3 and point.path.name == "ckpt-step-3"


def test_training_refuses_to_start_without_disk(settings: Settings) -> None:
    settings.min_free_disk_bytes = 1 << 62
    with pytest.raises(TrainingError) as err:
        _check_disk(settings)
    assert err.value.code == "insufficient_disk"


def test_cancel_can_delete_the_jobs_checkpoints(settings: Settings) -> None:
    settings.delete_checkpoints_on_cancel = True
    job_id = make_job(settings, "paused")
    storage = Storage(settings)
    names = [f"ft:ftserve-tiny:personal::{job_id[6:]}:ckpt-step-{step}" for step in (3, 6)]
    with session_scope(settings) as s:
        for step, name in zip((3, 6), names, strict=True):
            s.add(
                Checkpoint(
                    id=new_id("ftckpt-"),
                    job_id=job_id,
                    org_id="personal",
                    created_at=now(),
                    step_number=step,
                    metrics={},
                    fine_tuned_model_checkpoint=name,
                )
            )
            catalog.register(s, name, "personal", "ftserve-tiny", job_id, step)
            storage.adapter_dir(job_id, step).mkdir(parents=True)
    with session_scope(settings) as s:
        assert cancel_job(s, settings, "personal", job_id).status == "cancelled"
    with session_scope(settings) as s:
        assert s.query(Checkpoint).filter(Checkpoint.job_id == job_id).count() == 0
        assert all(s.get(FineTunedModel, n) is None for n in names)
        messages = [e.message for e in s.query(JobEvent).filter(JobEvent.job_id == job_id)]
    assert "Deleted 2 checkpoints of the cancelled job" in messages
    assert not any(storage.adapter_dir(job_id, step).exists() for step in (3, 6))
