"""Jobs, events and checkpoints as the API shows them: DB rows to OpenAI's wire objects."""

from __future__ import annotations

from typing import Any

from ftserve.control.db.tables import Checkpoint, Job, JobEvent
from ftserve.core import methods
from ftserve.core.schemas.jobs import FineTuningJob, Hyperparameters, JobCheckpoint, JobError
from ftserve.core.schemas.jobs import JobEvent as WireEvent


def job_to_wire(job: Job) -> FineTuningJob:
    hp: dict[str, Any] = dict(job.hyperparameters)
    method = job.method or methods.DEFAULT
    return FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        # The deprecated top-level field holds the three hyperparameters every method has (OpenAI's shape).
        hyperparameters={k: v for k, v in hp.items() if k in Hyperparameters.model_fields},
        model=job.model,
        organization_id=job.org_id,
        result_files=list(job.result_files),
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        estimated_finish=job.estimated_finish,
        integrations=[],
        metadata=job.metadata_,
        method={"type": method, method: {**(job.method_config or {}), "hyperparameters": hp}},
        extensions=job.extensions or None,
        gang={"processes": job.gang_processes, "hosts": job.gang_hosts or 1} if job.gang_processes else None,
    )


def event_to_wire(e: JobEvent) -> WireEvent:
    return WireEvent(
        id=e.id,
        created_at=e.created_at,
        level=e.level,  # type: ignore[arg-type]
        message=e.message,
        data=e.data,
        type=e.type,  # type: ignore[arg-type]
    )


def checkpoint_to_wire(c: Checkpoint) -> JobCheckpoint:
    return JobCheckpoint(
        id=c.id,
        created_at=c.created_at,
        fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
        fine_tuning_job_id=c.job_id,
        metrics=c.metrics,
        step_number=c.step_number,
    )
