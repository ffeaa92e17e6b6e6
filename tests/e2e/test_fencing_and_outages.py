"""Two faults a lease must survive, on Postgres + Redis with real workers: a worker frozen (SIGSTOP) past its
lease and then thawed writes nothing once another worker has taken its job; and a database outage longer
than the lease costs the job no attempt while the api answers 503 with Retry-After."""

from __future__ import annotations

import csv
import io
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from openai import OpenAI
from sqlalchemy import create_engine, func, select

from ftserve.control.db.tables import Job, JobEvent
from tests.conftest import PG_ADMIN
from tests.e2e.conftest import client_for, wait_job, write_prompt_completion
from tests.servers import FTSERVE, Proc, Service, start_distributed

FAST_LEASE = {
    "FTSERVE_LEASE_SECONDS": "4",
    "FTSERVE_HEARTBEAT_SECONDS": "1",
    "FTSERVE_REAPER_INTERVAL_SECONDS": "1",
    "FTSERVE_MAX_JOB_ATTEMPTS": "2",
    "FTSERVE_DB_RETRY_SECONDS": "120",
}
LONG_JOB = {"n_epochs": 40, "batch_size": 4}  # 120 steps, a checkpoint every 3


def _wait_for(predicate: object, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def _job_row(service: Service, job_id: str) -> Job:
    engine = create_engine(service.env["FTSERVE_DATABASE_URL"])
    with engine.connect() as conn:
        row = conn.execute(select(Job).where(Job.id == job_id)).first()
    engine.dispose()
    assert row is not None
    return row  # type: ignore[return-value]


def _last_seq(service: Service, job_id: str) -> int:
    engine = create_engine(service.env["FTSERVE_DATABASE_URL"])
    with engine.connect() as conn:
        seq = conn.execute(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id)).scalar()
    engine.dispose()
    return int(seq or 0)


def _events_after(service: Service, job_id: str, seq: int) -> list[JobEvent]:
    engine = create_engine(service.env["FTSERVE_DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > seq).order_by(JobEvent.seq)
        ).all()
    engine.dispose()
    return rows  # type: ignore[return-value]


def _steps(client: OpenAI, job_id: str) -> list[int]:
    events = reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))
    return [e.data["step"] for e in events if e.type == "metrics"]  # type: ignore[index]


def _csv_steps(client: OpenAI, file_id: str) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader(io.StringIO(client.files.content(file_id).text))]


@pytest.fixture()
def two_workers(tmp_path: Path, bases_dir: Path, postgres_url: str, redis_url: str) -> Iterator[Service]:
    service = start_distributed(tmp_path, bases_dir, postgres_url, redis_url, **FAST_LEASE)
    second = Proc([*FTSERVE, "worker", "--name", "second"], service.env, tmp_path / "worker2.log")
    service.procs.append(second)
    yield service
    for proc in service.procs:
        if proc.alive():
            os.killpg(proc.proc.pid, signal.SIGCONT)  # never leave a stopped process behind
    service.stop()


@pytest.mark.local_storage  # looks at the data dir's files
def test_a_worker_frozen_past_its_lease_writes_nothing_once_replaced(two_workers: Service, tmp_path: Path) -> None:
    client = client_for(two_workers)
    upload = client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=upload.id, model="ftserve-tiny", hyperparameters=LONG_JOB)
    _wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, what="a first checkpoint")
    owner = _job_row(two_workers, job.id).lease_owner
    assert owner is not None
    frozen = next(p for p in two_workers.procs[1:] if owner.endswith(f":{p.proc.pid}"))
    other = next(p for p in two_workers.procs[1:] if p is not frozen)
    os.killpg(frozen.proc.pid, signal.SIGSTOP)
    stopped_at = max(_steps(client, job.id))
    # The lease runs out, the reaper requeues the job, the other worker resumes it and trains past the
    # frozen worker's step (a write of the frozen worker would now be out of order).
    _wait_for(lambda: (_job_row(two_workers, job.id).lease_owner or "").endswith(f":{other.proc.pid}"), what="takeover")
    _wait_for(lambda: max(_steps(client, job.id)) > stopped_at + 3, what="the new worker's progress")
    thawed_at = _last_seq(two_workers, job.id)
    os.killpg(frozen.proc.pid, signal.SIGCONT)
    _wait_for(lambda: f"job {job.id} stopped: lease lost" in frozen.output(), 60, "the thawed worker to stop")
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    # Everything written after the thaw is the new worker's: its steps in order, each checkpoint once.
    after = _events_after(two_workers, job.id, thawed_at)
    steps = [e.data["step"] for e in after if e.type == "metrics"]
    assert steps == list(range(steps[0], 121)), steps
    messages = [m for m in (e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))))]
    checkpoints = [m for m in messages if m.startswith("Checkpoint created at step")]
    assert len(checkpoints) == len(set(checkpoints)), checkpoints
    assert _csv_steps(client, done.result_files[0]) == list(range(1, 121))
    row = _job_row(two_workers, job.id)
    assert (row.attempts, row.worker_losses) == (2, 1)
    assert frozen.alive()  # the thawed worker stopped the job, not itself: it takes the next one
    job_dir = Path(two_workers.env["FTSERVE_DATA_DIR"]) / "jobs" / job.id
    assert not [p.name for p in job_dir.iterdir() if p.name.endswith(f".tmp-{frozen.proc.pid}")]  # nothing staged


def _outage(database_url: str) -> tuple[psycopg.Connection, str]:
    """Make the test's database refuse every connection and drop the open ones (the cluster stays up)."""
    name = database_url.rsplit("/", 1)[1]
    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    return admin, name


def test_a_database_outage_longer_than_the_lease_costs_no_attempt(two_workers: Service, tmp_path: Path) -> None:
    client = client_for(two_workers)
    upload = client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=upload.id, model="ftserve-tiny", hyperparameters=LONG_JOB)
    _wait_for(lambda: _steps(client, job.id) and max(_steps(client, job.id)) >= 3, what="a few steps")
    admin, name = _outage(two_workers.env["FTSERVE_DATABASE_URL"])
    statuses: Counter[int] = Counter()
    try:
        ends = time.monotonic() + 3 * float(FAST_LEASE["FTSERVE_LEASE_SECONDS"])
        while time.monotonic() < ends:
            answer = httpx.get(f"{two_workers.base_url}/v1/fine_tuning/jobs/{job.id}", timeout=30)
            statuses[answer.status_code] += 1
            if answer.status_code == 503:
                error = answer.json()["error"]
                assert error["code"] == "database_unavailable" and int(answer.headers["retry-after"]) >= 1
                assert f"Retry after {answer.headers['retry-after']} seconds" in error["message"]
            time.sleep(0.25)
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
    assert set(statuses) == {503}, statuses  # every request during the outage: 503, never a 500
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    row = _job_row(two_workers, job.id)
    assert (row.attempts, row.worker_losses) == (1, 0)  # the same claim went on: no attempt used
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert not [m for m in messages if "re-queued" in m], messages
    assert _csv_steps(client, done.result_files[0]) == list(range(1, 121))
    assert _steps(client, job.id) == list(range(1, 121))
