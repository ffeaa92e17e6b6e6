"""Thin Celery tasks: they carry ids only and hand the work to the training pipeline (through the torchrun
supervisor, worker/gang.py, which trains in this process unless the worker owns several devices)."""

from __future__ import annotations

from ftserve.control.broker import JOIN_JOB, RUN_JOB
from ftserve.core.config import get_settings
from ftserve.worker.app import celery


@celery.task(name=RUN_JOB)
def run_job(job_id: str) -> None:
    """Train one fine-tuning job; a duplicate delivery of a job already taken is a no-op."""
    from ftserve.worker.gang import run_job as run

    run(job_id, get_settings())


@celery.task(name=JOIN_JOB)
def join_job(job_id: str, attempt: int) -> None:
    """Join the gang of a multi-host job's claim `attempt` with this worker's devices, if it still needs a host."""
    from ftserve.worker.gang import join_job as join

    join(job_id, attempt, get_settings())
