"""Fine-tuning jobs: create (checks, then commit, then enqueue), read, list, cancel, events, checkpoints."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ftserve.control.db.tables import Checkpoint, File, Job, JobEvent
from ftserve.control.services import catalog, grader_checks, job_methods, job_state
from ftserve.control.services.files import get_file
from ftserve.control.services.pagination import page
from ftserve.control.services.queue import enqueue_training
from ftserve.core.config import Settings
from ftserve.core.errors import InvalidRequest, bad_request, not_found
from ftserve.core.ids import new_id, now
from ftserve.core.job_status import TERMINAL, JobStatus
from ftserve.core.schemas.jobs import JobCreate, ReinforcementHyperparameters


def _check_data_file(session: Session, org: str, file_id: str, param: str) -> File:
    f = get_file(session, org, file_id, param)
    if f.purpose != "fine-tune":
        raise bad_request(
            f"File {file_id} has purpose '{f.purpose}', not 'fine-tune'", param=param, code="invalid_file_purpose"
        )
    if f.status != "processed":
        raise bad_request(
            f"File {file_id} is not a valid training file: {f.status_details}",
            param=param,
            code="invalid_training_file" if param == "training_file" else "invalid_validation_file",
        )
    return f


def _base_has_chat_template(settings: Settings, base: str) -> bool | None:
    """Whether a prepared base's tokenizer has a chat template; None while the base is not prepared yet.

    Reads the tokenizer files only: the api never loads a model (nor imports torch).
    """
    spec = settings.base_models[base]
    local = Path(spec.source).expanduser()
    built_in = spec.source in ("tiny", "smollm2-gguf")
    folder = local if not built_in and local.is_dir() else settings.resolved_bases_dir() / base
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads(config.read_text()).get("chat_template"))
    except (OSError, ValueError):
        return None


def _check_chat_template(settings: Settings, base: str, train: File) -> None:
    """A chat or preference file needs a base whose tokenizer has a chat template (there is no default template)."""
    if train.format in ("chat", "preference") and _base_has_chat_template(settings, base) is False:
        raise bad_request(
            f"Base model '{base}' has no chat template, so it cannot train on {train.format}-format files: use "
            "prompt/completion examples, or register a base whose tokenizer has a chat template",
            param="training_file",
            code="chat_not_supported",
        )


def create_job(session: Session, settings: Settings, org: str, req: JobCreate) -> Job:
    """Check model, files and hyperparameters; commit the job as queued; then enqueue it."""
    method, hyperparameters = job_methods.method_of(req)
    resolved = catalog.resolve(session, settings, org, req.model)
    train = _check_data_file(session, org, req.training_file, "training_file")
    job_methods.check_format(method, train, "training_file")
    if req.validation_file:
        valid = _check_data_file(session, org, req.validation_file, "validation_file")
        if valid.format != train.format:
            raise bad_request(
                "validation_file and training_file must have the same format",
                param="validation_file",
                code="invalid_validation_file",
            )
    _check_chat_template(settings, resolved.base, train)
    hp = {k: ("auto" if v is None else v) for k, v in hyperparameters.model_dump().items()}
    ext = req.extensions.model_dump(exclude_none=True) if req.extensions else {}
    job_methods.check_extensions(method, resolved, ext)
    config = job_methods.method_config(req, method)
    if config is not None and "grader" in config:
        assert req.method is not None and req.method.reinforcement is not None  # method_config checked it
        assert isinstance(hyperparameters, ReinforcementHyperparameters)
        files = {train.id: "training_file", **({req.validation_file: "validation_file"} if req.validation_file else {})}
        grader_checks.check_reinforcement(settings, req.method.reinforcement.grader, hyperparameters, files)
    job = Job(
        id=new_id("ftjob-"),
        org_id=org,
        model=req.model,
        training_file=train.id,
        validation_file=req.validation_file,
        suffix=req.suffix or None,
        seed=req.seed if req.seed is not None else secrets.randbelow(2**31 - 1),
        status=JobStatus.VALIDATING_FILES,
        method=method.name,
        method_config=config,
        hyperparameters=hp,
        extensions=ext,
        metadata_=req.metadata,
        result_files=[],
        created_at=now(),
    )
    session.add(job)
    session.flush()
    job_state.add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    job_state.add_event(session, job.id, f"Validating training file: {train.id}")
    if resolved.job_id is not None:
        job_state.add_event(session, job.id, f"Starting from fine-tuned model {resolved.name}")
    job_state.transition(
        session,
        job.id,
        JobStatus.QUEUED,
        "Files validated, moving job to queued state",
        only_from={JobStatus.VALIDATING_FILES},
        enqueued_at=time.time(),
    )
    session.commit()
    session.refresh(job)
    enqueue_training(settings, job.id, settings.base_models[resolved.base].queue)
    return job


def get_job(session: Session, org: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.org_id != org:
        raise not_found("fine-tuning job", job_id)
    return job


def list_jobs(
    session: Session, org: str, after: str | None, limit: int, metadata: dict[str, str] | None = None
) -> tuple[list[Job], bool]:
    """Newest first; with `metadata`, only jobs whose metadata has every given key=value."""
    stmt = select(Job).where(Job.org_id == org)
    if not metadata:
        return page(session, stmt, Job, after=after, limit=limit)
    # Metadata is JSON, filtered here rather than in SQL so SQLite and Postgres behave the same.
    matches: list[Job] = []
    cursor = after
    while True:
        rows, more = page(session, stmt, Job, after=cursor, limit=500)
        matches.extend(j for j in rows if all((j.metadata_ or {}).get(k) == v for k, v in metadata.items()))
        if len(matches) > limit or not more or not rows:
            return matches[:limit], len(matches) > limit
        cursor = rows[-1].id


def purge_checkpoints(session: Session, settings: Settings, job_id: str) -> int:
    """Delete a job's checkpoints: their rows, their servable models and their adapter files."""
    ckpts = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)))
    deleted = catalog.delete_checkpoints(session, settings, ckpts)
    if deleted:
        job_state.add_event(session, job_id, f"Deleted {deleted} checkpoints of the cancelled job")
    return deleted


# A job's status as the end of a sentence that starts "Job ftjob-…".
_FINISHED = {
    JobStatus.SUCCEEDED: "has already succeeded",
    JobStatus.FAILED: "has already failed",
    JobStatus.CANCELLED: "has already been cancelled",
}
_STATE = {
    **_FINISHED,
    JobStatus.VALIDATING_FILES: "is still validating its files",
    JobStatus.QUEUED: "is queued",
    JobStatus.RUNNING: "is running",
    JobStatus.PAUSED: "is paused",
}


def cancel_job(session: Session, settings: Settings, org: str, job_id: str) -> Job:
    """Cancel a job that has not finished; a running job stops before its next optimizer step."""
    job = get_job(session, org, job_id)
    if job.status in TERMINAL:
        raise InvalidRequest(
            f"Job {job_id} {_FINISHED[job.status]}; only a job that has not finished can be cancelled.",
            param="fine_tuning_job_id",
            code="job_not_cancellable",
        )
    # The DB state is the signal: a worker training this job sees `cancelled` between optimizer steps
    # and stops, and its own later transitions (succeeded/failed) no longer apply.
    job_state.transition(session, job.id, JobStatus.CANCELLED, "Fine-tuning job cancelled")
    if settings.delete_checkpoints_on_cancel:
        purge_checkpoints(session, settings, job.id)
    session.commit()
    session.refresh(job)
    return job


def _move(
    session: Session,
    org: str,
    job_id: str,
    to: JobStatus,
    message: str,
    only_from: set[JobStatus],
    refusal: str,
    code: str,
    **fields: Any,
) -> Job:
    """A client-requested transition; a job in the wrong state gets a 400 with `code`."""
    job = get_job(session, org, job_id)
    if not job_state.transition(session, job.id, to, message, only_from=only_from, **fields):
        raise InvalidRequest(f"Job {job_id} {_STATE[job.status]}; {refusal}.", param="fine_tuning_job_id", code=code)
    session.commit()
    session.refresh(job)
    return job


def pause_job(session: Session, org: str, job_id: str) -> Job:
    """Pause a queued or running job; a running job stops at its next optimizer step and keeps its progress."""
    return _move(
        session,
        org,
        job_id,
        JobStatus.PAUSED,
        "Fine-tuning job paused",
        {JobStatus.QUEUED, JobStatus.RUNNING},
        "only queued or running jobs can be paused",
        "job_not_pausable",
    )


def resume_job(session: Session, settings: Settings, org: str, job_id: str) -> Job:
    """Put a paused job back in the queue; it continues from its last saved progress."""
    job = _move(
        session,
        org,
        job_id,
        JobStatus.QUEUED,
        "Fine-tuning job resumed",
        {JobStatus.PAUSED},
        "only paused jobs can be resumed",
        "job_not_paused",
        enqueued_at=time.time(),
    )
    enqueue_training(settings, job.id)
    return job


def list_events(session: Session, org: str, job_id: str, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    get_job(session, org, job_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after:  # an empty cursor means the first page, as everywhere
        anchor = session.scalar(select(JobEvent.seq).where(JobEvent.id == after, JobEvent.job_id == job_id))
        if anchor is None:
            raise bad_request(f"No event with id '{after}' to page after", param="after", code="invalid_cursor")
        stmt = stmt.where(JobEvent.seq < anchor)
    rows = list(session.scalars(stmt.order_by(JobEvent.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_checkpoints(
    session: Session, org: str, job_id: str, after: str | None, limit: int
) -> tuple[list[Checkpoint], bool]:
    get_job(session, org, job_id)
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id)
    return page(session, stmt, Checkpoint, after=after, limit=limit)
