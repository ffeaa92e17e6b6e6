"""Enqueue training after the job is committed; the task carries only the job id."""

from __future__ import annotations

import logging

from app.broker import RUN_JOB, celery_for
from app.config import Settings

log = logging.getLogger(__name__)


def enqueue_training(settings: Settings, job_id: str) -> bool:
    """Send run_job(job_id) to the broker; False if the broker refused (the reaper re-sends queued jobs)."""
    try:
        celery_for(settings).send_task(RUN_JOB, args=[job_id], retry=True, retry_policy={"max_retries": 3})
    except Exception:
        log.exception("could not enqueue job %s; it stays queued for the reaper", job_id)
        return False
    return True
