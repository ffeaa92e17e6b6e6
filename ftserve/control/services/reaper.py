"""The reaper: requeue jobs whose worker vanished (lease expired), fail them after the attempt limit,
re-send queued jobs the broker lost, sweep orphaned files, and purge expired Idempotency-Keys. Safe to
run in several processes at once.

Database outages: a worker cannot renew its lease while the database is unreachable, and neither can the
reaper look. So the reaper remembers the outages it saw (DbWatch): once the database is back it gives
every worker a full lease to renew before requeueing anything, and a lease that ran out during an outage
is requeued without counting against the job's attempts (worker_losses)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from ftserve.control.db.session import is_unavailable, session_scope
from ftserve.control.db.tables import Job
from ftserve.control.services import idempotency, job_state, orphans
from ftserve.control.services.queue import enqueue_training, held_job_ids
from ftserve.core.config import Settings
from ftserve.core.job_status import JobStatus

log = logging.getLogger(__name__)


@dataclass
class DbWatch:
    """What one reaper saw of the database: when it last reached it and the outages it lived through."""

    last_ok: float | None = None
    up_since: float = 0.0  # reachable without a break since then (0: no outage seen)
    down_since: float | None = None  # set while unreachable: the last time it was known to be up
    outages: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=16))
    swept_at: float | None = None

    def reached(self, at: float) -> None:
        if self.down_since is not None:
            self.outages.append((self.down_since, at))
            self.up_since = at
            self.down_since = None
            log.warning("reaper: the database is reachable again; leases get a grace period")
        self.last_ok = at

    def unreachable(self, at: float) -> None:
        if self.down_since is None:
            self.down_since = self.last_ok if self.last_ok is not None else at
            log.warning("reaper: the database is unreachable")

    def outage_cost(self, expired_at: float, lease: float) -> bool:
        """True if a lease that ran out at expired_at did so during an outage (or its grace period)."""
        return any(start <= expired_at <= end + lease for start, end in self.outages)


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    keys_purged: int = 0
    swept: orphans.SweepReport | None = None


def _expired(session: Session, now: float) -> list[Job]:
    stmt = select(Job).where(
        Job.status == JobStatus.RUNNING, or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
    )
    return list(session.scalars(stmt))


def _lost(session: Session, settings: Settings, job: Job, watch: DbWatch, report: ReapReport) -> None:
    """Requeue (or fail) a job whose lease ran out, if nobody renewed or took it meanwhile."""
    expired_at = job.lease_expires_at or 0.0
    outage = watch.outage_cost(expired_at, settings.lease_seconds)
    losses = job.worker_losses + (0 if outage else 1)
    lost = {"lease_owner": job.lease_owner, "attempts": job.attempts, "worker_losses": losses}
    # Compare-and-set on the lease as read: a worker that renewed (or a reaper that acted) in between wins.
    guard = [
        Job.attempts == job.attempts,
        Job.lease_owner.is_not_distinct_from(job.lease_owner),
        Job.lease_expires_at.is_not_distinct_from(job.lease_expires_at),
    ]
    if losses < settings.max_job_attempts:
        if outage:
            message = f"Worker {job.lease_owner} lost its lease during a database outage; job re-queued (not counted)"
        else:
            message = (
                f"Worker {job.lease_owner} stopped responding; job re-queued "
                f"(attempt {losses} of {settings.max_job_attempts})"
            )
        if job_state.transition(
            session,
            job.id,
            JobStatus.QUEUED,
            message,
            only_from={JobStatus.RUNNING},
            level="warn",
            data=lost,
            where=guard,
            lease_owner=None,
            lease_expires_at=None,
            worker_losses=losses,
            enqueued_at=time.time(),
        ):
            report.requeued.append(job.id)
        return
    error = {
        "code": "worker_lost",
        "param": None,
        "message": f"The worker running this job was lost {losses} times; giving up",
    }
    if job_state.transition(
        session,
        job.id,
        JobStatus.FAILED,
        f"Fine-tuning job failed: {error['message']}",
        only_from={JobStatus.RUNNING},
        level="error",
        data=lost,
        where=guard,
        error=error,
        worker_losses=losses,
    ):
        report.failed.append(job.id)


def _stale_queued(session: Session, settings: Settings, now: float, report: ReapReport) -> None:
    """Re-send queued jobs the broker no longer holds: not waiting in the queue, not with a live worker."""
    stale = list(
        session.scalars(
            select(Job.id).where(
                Job.status == JobStatus.QUEUED,
                or_(
                    Job.enqueued_at.is_(None),
                    Job.enqueued_at < now - settings.requeue_after_seconds,
                    # resumed while its paused worker held it, and that worker is gone
                    Job.lease_expires_at < now,
                ),
            )
        )
    )
    if not stale:
        return
    held = held_job_ids(settings, delivered_since=time.time() - settings.requeue_after_seconds) or set()
    for job_id in stale:
        if job_id in held:
            continue  # only waiting for a free worker: a second message would be a no-op delivery
        moved = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(enqueued_at=now, lease_owner=None, lease_expires_at=None)
        )
        if moved.rowcount:  # type: ignore[attr-defined]
            report.resent.append(job_id)


def reap_once(settings: Settings, now: float | None = None, watch: DbWatch | None = None) -> ReapReport:
    """One pass; every change is a compare-and-set, so concurrent reapers never double-handle a job."""
    now = time.time() if now is None else now
    watch = watch or DbWatch()
    report = ReapReport()
    with session_scope(settings) as s:
        s.execute(select(1))  # raises while the database is unreachable
        watch.reached(now)
        # After an outage every worker gets a full lease to reach the database again before it counts as lost.
        if now >= watch.up_since + settings.lease_seconds:
            for job in _expired(s, now):
                _lost(s, settings, job, watch, report)
        _stale_queued(s, settings, now, report)
    with session_scope(settings) as s:
        report.keys_purged = idempotency.purge_expired(s, settings, int(now))
    if watch.swept_at is None or now - watch.swept_at >= settings.orphan_sweep_seconds:
        with session_scope(settings) as s:
            report.swept = orphans.sweep(s, settings, now)
        watch.swept_at = now
    # Enqueue only after the commit, so a worker never sees a job the DB does not yet show as queued.
    for job_id in report.requeued + report.resent:
        enqueue_training(settings, job_id)
    if report.requeued or report.failed or report.resent:
        log.warning("reaper: requeued %s, failed %s, re-sent %s", report.requeued, report.failed, report.resent)
    return report


async def run_forever(settings: Settings) -> None:
    """The api role's background loop (its first pass at start-up sweeps orphans)."""
    watch = DbWatch()
    while True:
        try:
            await asyncio.to_thread(reap_once, settings, None, watch)
        except Exception as exc:
            if is_unavailable(exc):
                watch.unreachable(time.time())
            else:
                log.exception("reaper pass failed")
        await asyncio.sleep(settings.reaper_interval_seconds)
