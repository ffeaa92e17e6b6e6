"""The one job state machine: a transition table and compare-and-set updates that write an event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from ftserve.control.db.tables import Job, JobEvent
from ftserve.core.ids import new_id, now
from ftserve.core.job_status import TERMINAL, JobStatus

S = JobStatus
# to-state -> the states a job may be in to move there.
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.VALIDATING_FILES, S.RUNNING, S.PAUSED}),  # running->queued: requeue a lost job
    S.RUNNING: frozenset({S.QUEUED}),
    S.PAUSED: frozenset({S.QUEUED, S.RUNNING}),
    S.SUCCEEDED: frozenset({S.RUNNING}),
    S.FAILED: frozenset({S.VALIDATING_FILES, S.QUEUED, S.RUNNING, S.PAUSED}),
    S.CANCELLED: frozenset({S.VALIDATING_FILES, S.QUEUED, S.RUNNING, S.PAUSED}),
}


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(
        id=new_id("ftevent-"), job_id=job_id, created_at=now(), level=level, message=message, type=type, data=data
    )
    session.add(event)
    return event


def transition(
    session: Session,
    job_id: str,
    to: JobStatus,
    message: str,
    *,
    only_from: frozenset[JobStatus] | set[JobStatus] | None = None,
    level: str = "info",
    data: dict[str, Any] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    **fields: Any,
) -> bool:
    """Move the job to `to` if its current state allows it (and the extra `where` conditions hold, e.g. the
    lease is still the caller's); True when this call made the change."""
    allowed = ALLOWED_FROM[to]
    if only_from is not None:
        allowed = allowed & frozenset(only_from)
    values: dict[str, Any] = {"status": to, **fields}
    if to in TERMINAL:
        values.setdefault("finished_at", now())
        values.setdefault("lease_owner", None)
        values.setdefault("lease_expires_at", None)
        values.setdefault("estimated_finish", None)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(allowed), *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, message, level=level, data=data)
    return True
