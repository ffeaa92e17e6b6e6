"""The job state machine: allowed transitions only, compare-and-set, an event for each change."""

from __future__ import annotations

from sqlalchemy import select

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Job, JobEvent
from ftserve.control.services import job_state
from ftserve.core.config import Settings
from tests.jobrows import make_job


def test_transitions_follow_the_table(settings: Settings) -> None:
    job_id = make_job(settings, "queued")
    with session_scope(settings) as s:
        assert job_state.transition(s, job_id, "running", "started")
        assert not job_state.transition(s, job_id, "running", "again")  # already running: CAS fails
        assert job_state.transition(s, job_id, "succeeded", "done")
        assert not job_state.transition(s, job_id, "cancelled", "too late")  # terminal
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded" and job.finished_at is not None
        messages = list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
    assert messages == ["started", "done"]


def test_only_from_restricts_the_source_state(settings: Settings) -> None:
    job_id = make_job(settings, "validating_files")
    with session_scope(settings) as s:
        assert not job_state.transition(s, job_id, "failed", "x", only_from={"running"})
        assert job_state.transition(s, job_id, "cancelled", "cancelled")
