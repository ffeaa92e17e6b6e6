"""The training side's only door to the DB: claim a job, keep its lease alive, check it is still ours,
and write its events, metrics, checkpoints and final state, each a typed method."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from app.config import Settings
from app.db.session import session_scope
from app.db.tables import Checkpoint, Job
from app.errors import NotFound
from app.ids import checkpoint_model_name, new_id, now
from app.job_status import JobStatus
from app.schemas.jobs import DpoHyperparameters, FtserveExtensions, Hyperparameters
from app.services import catalog, job_state
from app.services import files as file_service

log = logging.getLogger(__name__)

CHECKPOINT_METRICS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class AdapterKey:
    """Which stored adapter: a job's final one (step None) or its checkpoint at a step."""

    job_id: str
    step: int | None


@dataclass(frozen=True)
class JobSpec:
    """What training needs of the job row, read once when the job is claimed."""

    id: str
    org: str
    model: str
    base: str
    start_adapter: AdapterKey | None
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    hyperparameters: Hyperparameters  # DpoHyperparameters for a DPO job
    extensions: FtserveExtensions
    method: str = "supervised"


class JobStopped(Exception):
    """The job is no longer ours to train: cancelled, paused, deleted, or its lease went to another worker."""

    def __init__(self, status: JobStatus | None, reason: str | None = None) -> None:
        super().__init__(reason or (status.value if status else "deleted"))
        self.status = status

    @property
    def paused(self) -> bool:
        return self.status is JobStatus.PAUSED


class TrainingStore:
    """Reads and writes one job for the worker that claims it; progress is written only under its lease."""

    def __init__(self, settings: Settings, job_id: str, owner: str | None = None) -> None:
        self.settings = settings
        self.job_id = job_id
        self.owner = owner or worker_id()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    # -- the lease ---------------------------------------------------------------------------
    def claim(self) -> JobSpec | None:
        """Move queued → running under this worker's lease; None if the job is not ours to run."""
        with session_scope(self.settings) as s:
            job = s.get(Job, self.job_id)
            if job is None:
                return None
            try:
                resolved = catalog.resolve(s, self.settings, job.org_id, job.model)
            except NotFound as gone:  # the starting model was deleted after the job was created
                job_state.transition(
                    s,
                    self.job_id,
                    JobStatus.FAILED,
                    f"Fine-tuning job failed: {gone.message}",
                    level="error",
                    only_from={JobStatus.QUEUED},
                    error={"code": "model_not_found", "message": gone.message, "param": "model"},
                )
                return None
            ok = job_state.transition(
                s,
                self.job_id,
                JobStatus.RUNNING,
                "Fine-tuning job started",
                only_from={JobStatus.QUEUED},
                lease_owner=self.owner,
                lease_expires_at=time.time() + self.settings.lease_seconds,
                attempts=Job.attempts + 1,
                started_at=now(),
            )
            if not ok:
                return None
            hp_type = DpoHyperparameters if job.method == "dpo" else Hyperparameters
            return JobSpec(
                id=job.id,
                org=job.org_id,
                model=job.model,
                base=resolved.base,
                start_adapter=None if resolved.job_id is None else AdapterKey(resolved.job_id, resolved.step),
                training_file=job.training_file,
                validation_file=job.validation_file,
                suffix=job.suffix,
                seed=job.seed,
                hyperparameters=hp_type.model_validate(
                    {k: v for k, v in job.hyperparameters.items() if k in hp_type.model_fields}
                ),
                extensions=FtserveExtensions.model_validate(job.extensions or {}),
                method=job.method,
            )

    def start_heartbeat(self) -> None:
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        # A thread, not the training loop, renews the lease: a slow step or model load must not look dead.
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                self.renew_lease()
            except Exception:
                log.exception("heartbeat failed for %s", self.job_id)

    def renew_lease(self) -> bool:
        with session_scope(self.settings) as s:
            result = s.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == self.owner)
                .values(lease_expires_at=time.time() + self.settings.lease_seconds)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def check(self) -> None:
        """Raise JobStopped unless the job is still running under this worker's lease."""
        with session_scope(self.settings) as s:
            row = s.execute(select(Job.status, Job.lease_owner).where(Job.id == self.job_id)).first()
        if row is None:
            raise JobStopped(None)
        if row.status is not JobStatus.RUNNING:
            raise JobStopped(row.status)
        if row.lease_owner != self.owner:
            raise JobStopped(row.status, "lease lost")

    # -- progress ----------------------------------------------------------------------------
    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        with session_scope(self.settings) as s:
            job_state.add_event(s, self.job_id, message, level=level, data=data)

    def resolved_hyperparameters(self, hyperparameters: dict[str, Any], message: str, data: dict[str, Any]) -> None:
        """Record what "auto" resolved to (the job object shows it from now on) and say so in an event."""
        with session_scope(self.settings) as s:
            self._update(s, hyperparameters=hyperparameters)
            job_state.add_event(s, self.job_id, message, data=data)

    def step(self, message: str, data: dict[str, Any], *, estimated_finish: int, trained_tokens: int) -> None:
        """A step's metrics event, with the job's running totals."""
        with session_scope(self.settings) as s:
            self._update(s, estimated_finish=estimated_finish, trained_tokens=trained_tokens)
            job_state.add_event(s, self.job_id, message, type="metrics", data=data)

    def _update(self, s: Any, **values: Any) -> None:
        s.execute(update(Job).where(Job.id == self.job_id, Job.lease_owner == self.owner).values(**values))

    def checkpoint(self, org: str, base: str, final_name: str, step: int, metrics: dict[str, Any]) -> str:
        """Register a saved checkpoint as a servable model, keep only the newest N; its model name."""
        name = checkpoint_model_name(final_name, step)
        with session_scope(self.settings) as s:
            s.add(
                Checkpoint(
                    id=new_id("ftckpt-"),
                    job_id=self.job_id,
                    org_id=org,
                    created_at=now(),
                    step_number=step,
                    metrics={k: metrics.get(k) for k in CHECKPOINT_METRICS},
                    fine_tuned_model_checkpoint=name,
                )
            )
            catalog.register(s, name, org, base, self.job_id, step)
            job_state.add_event(s, self.job_id, f"Checkpoint created at step {step}", data={"model": name})
            old = list(
                s.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.job_id == self.job_id)
                    .order_by(Checkpoint.step_number.desc())
                    .offset(self.settings.checkpoints_keep)
                )
            )
            catalog.delete_checkpoints(s, self.settings, old)
        return name

    def finish(self, org: str, base: str, name: str, trained_tokens: int, result_csv: bytes) -> None:
        """Store the result CSV, register the final model, and move running → succeeded.

        Raises JobStopped when the job was cancelled in the last moments: nothing is published then.
        """
        with session_scope(self.settings) as s:
            result = file_service.create_result_file(s, self.settings, org, f"{self.job_id}-results.csv", result_csv)
            catalog.register(s, name, org, base, self.job_id, None)
            job_state.add_event(s, self.job_id, f"New fine-tuned model created: {name}")
            ok = job_state.transition(
                s,
                self.job_id,
                JobStatus.SUCCEEDED,
                "The job has successfully completed",
                only_from={JobStatus.RUNNING},
                fine_tuned_model=name,
                trained_tokens=trained_tokens,
                result_files=[result.id],
            )
            if not ok:
                s.rollback()
                raise JobStopped(JobStatus.CANCELLED, "cancelled before completion")

    def fail(self, code: str, message: str, param: str | None) -> None:
        """running → failed with the job error {code, message, param}."""
        with session_scope(self.settings) as s:
            job_state.transition(
                s,
                self.job_id,
                JobStatus.FAILED,
                f"Fine-tuning job failed: {message}",
                level="error",
                only_from={JobStatus.RUNNING},
                error={"code": code, "message": message, "param": param},
            )
