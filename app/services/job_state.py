"""The one job state machine: a transition table and compare-and-set updates that write an event."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent
from app.ids import new_id, now

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

# to-state -> the states a job may be in to move there.
ALLOWED_FROM: dict[str, frozenset[str]] = {
    "queued": frozenset({"validating_files", "running", "paused"}),  # running->queued: requeue a lost job
    "running": frozenset({"queued"}),
    "paused": frozenset({"queued", "running"}),
    "succeeded": frozenset({"running"}),
    "failed": frozenset({"validating_files", "queued", "running", "paused"}),
    "cancelled": frozenset({"validating_files", "queued", "running", "paused"}),
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
    to: str,
    message: str,
    *,
    only_from: frozenset[str] | set[str] | None = None,
    level: str = "info",
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move the job to `to` if its current state allows it; True when this call made the change."""
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
        .where(Job.id == job_id, Job.status.in_(allowed))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, message, level=level, data=data)
    return True
