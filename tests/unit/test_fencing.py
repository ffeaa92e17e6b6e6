"""The training store's fence on a real SQLite DB: a claim that lost its lease writes nothing, a pause
always leaves a resume point (even when the resume comes first), nothing lands after a cancel."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy import select

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Checkpoint, FineTunedModel, Job, JobEvent
from ftserve.control.services.jobs import cancel_job, pause_job, resume_job
from ftserve.control.services.reaper import reap_once
from ftserve.control.services.training_store import JobStopped, TrainingStore
from ftserve.core.config import Settings
from tests.jobrows import job_row, make_job

ORG = "personal"


def _events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_scope(settings) as s:
        rows = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
        s.expunge_all()
    return rows


def _writes(store: TrainingStore, placed: list[str]) -> list[Callable[[], object]]:
    """Every write a worker makes, each with a `place` that records whether a file would have been promoted."""
    return [
        lambda: store.event("Step event"),
        lambda: store.step("Step 40/60", {"step": 40}, estimated_finish=0, trained_tokens=1),
        lambda: store.resolved_hyperparameters({"n_epochs": 1}, "Hyperparameters", {}),
        lambda: store.checkpoint(ORG, "ftserve-tiny", "ft:x", 40, {"step": 40}, lambda: placed.append("ckpt")),
        lambda: store.finish(ORG, "ftserve-tiny", "ft:x", 1, b"step\n", lambda: placed.append("final")),
    ]


def test_a_worker_that_lost_its_lease_writes_nothing(settings: Settings) -> None:
    settings.lease_seconds = 60
    job_id = make_job(settings, "queued")
    old = TrainingStore(settings, job_id, "worker-a")
    assert old.claim() is not None and old.attempt == 1
    # worker-a freezes; its lease runs out; the reaper requeues the job and worker-b takes it over
    reap_once(settings, now=time.time() + 120)
    new = TrainingStore(settings, job_id, "worker-b")
    spec = new.claim()
    assert spec is not None and spec.attempt == 2
    before = [e.id for e in _events(settings, job_id)]
    placed: list[str] = []
    for write in _writes(old, placed):
        with pytest.raises(JobStopped, match="lease lost"):
            write()
    with pytest.raises(JobStopped, match="lease lost"):
        old.check()
    assert not old.renew_lease()
    assert not old.fail("internal_error", "boom", None)
    assert placed == []  # no file promoted
    assert [e.id for e in _events(settings, job_id)] == before  # no event, metric or checkpoint
    with session_scope(settings) as s:
        assert s.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job_id)) is None
        assert s.get(FineTunedModel, "ft:x") is None
    job = job_row(settings, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "worker-b", 2)
    new.step("Step 1/60", {"step": 1}, estimated_finish=0, trained_tokens=1)  # the new claim writes
    assert _events(settings, job_id)[-1].message == "Step 1/60"


def test_the_same_worker_restarted_is_fenced_by_the_attempt(settings: Settings) -> None:
    job_id = make_job(settings, "queued")
    first = TrainingStore(settings, job_id, "host:1")
    assert first.claim() is not None
    reap_once(settings, now=time.time() + settings.lease_seconds + 5)
    second = TrainingStore(settings, job_id, "host:1")  # same host and pid: only the attempt tells them apart
    assert second.claim() is not None
    with pytest.raises(JobStopped, match="lease lost"):
        first.event("late")


def test_nothing_lands_after_a_cancel(settings: Settings) -> None:
    job_id = make_job(settings, "queued")
    store = TrainingStore(settings, job_id, "worker-a")
    assert store.claim() is not None
    with session_scope(settings) as s:
        cancel_job(s, settings, ORG, job_id)
    placed: list[str] = []
    for write in _writes(store, placed):
        with pytest.raises(JobStopped):
            write()
    assert not store.fail("internal_error", "boom", None)
    assert placed == []
    assert _events(settings, job_id)[-1].message == "Fine-tuning job cancelled"
    assert job_row(settings, job_id).status == "cancelled"


def test_pause_saves_a_resume_point_then_lets_the_lease_go(settings: Settings) -> None:
    job_id = make_job(settings, "queued")
    store = TrainingStore(settings, job_id, "worker-a")
    assert store.claim() is not None
    with session_scope(settings) as s:
        pause_job(s, ORG, job_id)
    store.step("Step 7/60", {"step": 7}, estimated_finish=0, trained_tokens=1)  # a step already trained is kept
    with pytest.raises(JobStopped) as stop:
        store.check()
    assert stop.value.paused
    placed: list[str] = []
    assert store.pause_point_saved(7, lambda: placed.append("resume")) is False
    assert placed == ["resume"]
    job = job_row(settings, job_id)
    assert job.status == "paused" and job.lease_owner is None
    assert _events(settings, job_id)[-1].message == "Paused at step 7; resume point saved"
    with session_scope(settings) as s:
        resume_job(s, settings, ORG, job_id)
    other = TrainingStore(settings, job_id, "worker-b")
    assert other.claim() is not None and other.attempt == 2
    assert job_row(settings, job_id).worker_losses == 0  # a pause is not a lost worker


def test_pause_then_resume_before_the_worker_looks_keeps_its_progress(settings: Settings) -> None:
    job_id = make_job(settings, "queued")
    store = TrainingStore(settings, job_id, "worker-a")
    assert store.claim() is not None
    with session_scope(settings) as s:
        pause_job(s, ORG, job_id)
    with session_scope(settings) as s:
        resume_job(s, settings, ORG, job_id)  # resumed before the worker's next step
    assert TrainingStore(settings, job_id, "worker-b").claim() is None  # the resume's delivery: still held
    with pytest.raises(JobStopped) as stop:
        store.check()
    assert stop.value.paused  # queued, but still under worker-a's lease: it was paused
    placed: list[str] = []
    assert store.pause_point_saved(12, lambda: placed.append("resume")) is True  # saved, and it goes on
    assert placed == ["resume"]
    store.check()
    job = job_row(settings, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "worker-a", 1)
    event = _events(settings, job_id)[-1]
    assert event.message.startswith("Resume point saved at step 12") and event.data == {"step": 12}
    store.step("Step 13/60", {"step": 13}, estimated_finish=0, trained_tokens=1)


def test_a_paused_job_cancelled_before_the_worker_looks_saves_nothing(settings: Settings) -> None:
    job_id = make_job(settings, "queued")
    store = TrainingStore(settings, job_id, "worker-a")
    assert store.claim() is not None
    with session_scope(settings) as s:
        pause_job(s, ORG, job_id)
        cancel_job(s, settings, ORG, job_id)
    with pytest.raises(JobStopped) as stop:
        store.check()
    assert not stop.value.paused
    placed: list[str] = []
    with pytest.raises(JobStopped):
        store.pause_point_saved(3, lambda: placed.append("resume"))
    assert placed == []


def test_a_job_whose_row_training_cannot_read_fails_instead_of_looping(settings: Settings) -> None:
    """A claim reads the row as training will first: a value it cannot take (here a reasoning_effort that is not
    one of OpenAI's levels) fails the job with a code, where a claim that raised would leave it queued forever."""
    job_id = make_job(settings, "queued", method="reinforcement")
    with session_scope(settings) as s:
        row = s.get(Job, job_id)
        assert row is not None
        row.hyperparameters = {"reasoning_effort": "auto"}
    assert TrainingStore(settings, job_id, "worker-a").claim() is None
    job = job_row(settings, job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "invalid_job", job.error
    assert job.attempts == 0  # never claimed
