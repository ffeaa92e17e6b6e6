"""Publish a job's outputs: epoch checkpoints (servable models, newest N kept) and the final adapter + CSV."""

from __future__ import annotations

from typing import Any

from peft import PeftModel
from sqlalchemy import select

from app.config import Settings
from app.db.models import Checkpoint
from app.db.session import session_scope
from app.ids import checkpoint_model_name, new_id, now
from app.services import files as file_service
from app.services import job_state
from app.services import models as model_service
from app.storage import Storage
from worker.training.export import results_csv, save_adapter
from worker.training.reporter import JobStopped

CHECKPOINT_METRICS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def checkpoint(
    job_id: str,
    org: str,
    base: str,
    settings: Settings,
    model: PeftModel,
    final_name: str,
    step: int,
    metrics: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> str:
    """Save an epoch-end checkpoint (with the trainer state to resume from), register it as a servable
    model, keep only the newest N; returns its model name."""
    storage = Storage(settings)
    save_adapter(model, storage.adapter_dir(job_id, step), state)
    name = checkpoint_model_name(final_name, step)
    with session_scope() as s:
        s.add(
            Checkpoint(
                id=new_id("ftckpt-"),
                job_id=job_id,
                org_id=org,
                created_at=now(),
                step_number=step,
                metrics={k: metrics.get(k) for k in CHECKPOINT_METRICS},
                fine_tuned_model_checkpoint=name,
            )
        )
        model_service.register(s, name, org, base, job_id, step)
        job_state.add_event(s, job_id, f"Checkpoint created at step {step}", data={"model": name})
        old = list(
            s.scalars(
                select(Checkpoint)
                .where(Checkpoint.job_id == job_id)
                .order_by(Checkpoint.step_number.desc())
                .offset(settings.checkpoints_keep)
            )
        )
        model_service.delete_checkpoints(s, settings, old)
    return name


def finish(
    job_id: str,
    org: str,
    base: str,
    settings: Settings,
    model: PeftModel,
    name: str,
    trained_tokens: int,
    rows: list[dict[str, Any]],
) -> None:
    """Save the final adapter and result CSV, register the model, and move running → succeeded."""
    save_adapter(model, Storage(settings).adapter_dir(job_id, None))
    with session_scope() as s:
        result = file_service.create_result_file(s, settings, org, f"{job_id}-results.csv", results_csv(rows))
        model_service.register(s, name, org, base, job_id, None)
        job_state.add_event(s, job_id, f"New fine-tuned model created: {name}")
        ok = job_state.transition(
            s,
            job_id,
            "succeeded",
            "The job has successfully completed",
            only_from={"running"},
            fine_tuned_model=name,
            trained_tokens=trained_tokens,
            result_files=[result.id],
        )
        if not ok:
            # Cancelled in the last moments: the job keeps its cancelled state and nothing is published.
            s.rollback()
            raise JobStopped("cancelled before completion")
