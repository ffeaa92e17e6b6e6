"""Job rows in the test DB: inserted straight, for tests of the state machine, claim and reaper; read back with
their events after a run."""

from __future__ import annotations

from sqlalchemy import select

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Job, JobEvent
from ftserve.core.config import Settings
from ftserve.core.ids import new_id, now


def make_job(settings: Settings, status: str, org: str = "personal", **fields: object) -> str:
    """A job in `status` (other columns defaulted or given); returns its id."""
    job_id = new_id("ftjob-")
    with session_scope(settings) as s:
        s.add(
            Job(
                id=job_id,
                org_id=org,
                model="ftserve-tiny",
                training_file="file-x",
                seed=1,
                status=status,
                hyperparameters={},
                extensions={},
                result_files=[],
                created_at=now(),
                **fields,
            )
        )
    return job_id


def job_row(settings: Settings, job_id: str) -> Job:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def job_and_events(settings: Settings, job_id: str) -> tuple[Job, list[JobEvent]]:
    """The job row and its events in order, detached from the session."""
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
        s.expunge_all()
    return job, events
