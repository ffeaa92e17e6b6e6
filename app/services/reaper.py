"""The reaper: requeue jobs whose worker vanished (lease expired), fail them after the attempt limit,
re-send queued jobs the broker may have lost, and purge expired Idempotency-Keys. Safe to run in
several processes at once."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.session import session_scope
from app.db.tables import Job
from app.job_status import JobStatus
from app.services import idempotency, job_state
from app.services.queue import enqueue_training

log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    keys_purged: int = 0


def _expired(session: Session, now: float) -> list[Job]:
    stmt = select(Job).where(
        Job.status == JobStatus.RUNNING, or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
    )
    return list(session.scalars(stmt))


def reap_once(settings: Settings, now: float | None = None) -> ReapReport:
    """One pass; every change is a compare-and-set, so concurrent reapers never double-handle a job."""
    now = time.time() if now is None else now
    report = ReapReport()
    with session_scope(settings) as s:
        for job in _expired(s, now):
            lost = {"lease_owner": job.lease_owner, "attempts": job.attempts}
            guard = {"only_from": {JobStatus.RUNNING}}
            if job.attempts < settings.max_job_attempts:
                moved = job_state.transition(
                    s,
                    job.id,
                    JobStatus.QUEUED,
                    f"Worker {job.lease_owner} stopped responding; job re-queued "
                    f"(attempt {job.attempts} of {settings.max_job_attempts})",
                    level="warn",
                    data=lost,
                    lease_owner=None,
                    lease_expires_at=None,
                    enqueued_at=now,
                    **guard,
                )
                if moved:
                    report.requeued.append(job.id)
            else:
                error = {
                    "code": "worker_lost",
                    "param": None,
                    "message": f"The worker running this job was lost {job.attempts} times; giving up",
                }
                if job_state.transition(
                    s,
                    job.id,
                    JobStatus.FAILED,
                    f"Fine-tuning job failed: {error['message']}",
                    level="error",
                    data=lost,
                    error=error,
                    **guard,
                ):
                    report.failed.append(job.id)
        stale = s.scalars(
            select(Job.id).where(
                Job.status == JobStatus.QUEUED,
                or_(Job.enqueued_at.is_(None), Job.enqueued_at < now - settings.requeue_after_seconds),
            )
        )
        for job_id in list(stale):
            s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(enqueued_at=now))
            report.resent.append(job_id)
    with session_scope(settings) as s:
        report.keys_purged = idempotency.purge_expired(s, settings, int(now))
    # Enqueue only after the commit, so a worker never sees a job the DB does not yet show as queued.
    for job_id in report.requeued + report.resent:
        enqueue_training(settings, job_id)
    if report.requeued or report.failed or report.resent:
        log.warning("reaper: requeued %s, failed %s, re-sent %s", report.requeued, report.failed, report.resent)
    return report


async def run_forever(settings: Settings) -> None:
    """The api role's background loop."""
    while True:
        await asyncio.sleep(settings.reaper_interval_seconds)
        try:
            await asyncio.to_thread(reap_once, settings)
        except Exception:
            log.exception("reaper pass failed")
