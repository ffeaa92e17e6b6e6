"""The training side's only door to the DB: claim a job, keep its lease alive, check it is still ours,
and write its events, metrics, checkpoints and final state, each a typed method.

Every write is fenced: it lands only while the job's (lease_owner, attempts) are still this worker's claim,
in the same transaction as a row-locking compare-and-set; a write that finds the lease gone raises
JobStopped, so a worker that was frozen past its lease and replaced writes nothing and stops. Files a
write publishes (a checkpoint, the final adapter, a resume point) are promoted inside that transaction.
While the database is unreachable each call retries with backoff, up to settings.db_retry_seconds."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

from ftserve.control.db.session import is_unavailable, session_scope
from ftserve.control.db.tables import ApiKey, Checkpoint, Job
from ftserve.control.services import auth, catalog, job_state
from ftserve.control.services import files as file_service
from ftserve.core import methods
from ftserve.core.config import Settings
from ftserve.core.errors import NotFound
from ftserve.core.ids import checkpoint_model_name, new_id, now
from ftserve.core.job_status import JobStatus
from ftserve.core.schemas.jobs import FtserveExtensions
from ftserve.training.ports import AdapterKey, JobSpec, JobStopped

log = logging.getLogger(__name__)
T = TypeVar("T")
S = JobStatus

CHECKPOINT_METRICS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def _fail_queued(s: Session, job_id: str, code: str, message: str, param: str | None) -> None:
    """A queued job that cannot be claimed fails with this error (a claim would fail the same way every time)."""
    job_state.transition(
        s,
        job_id,
        JobStatus.FAILED,
        f"Fine-tuning job failed: {message}",
        level="error",
        only_from={JobStatus.QUEUED},
        error={"code": code, "message": message, "param": param},
    )


def _judge_key_name(job_id: str) -> str:
    return f"judge for {job_id}"


def checkpoint_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's checkpoint metrics, plus the rewards a method reports (reinforcement's mean rewards, per
    sub-grader too; DPO's implicit rewards), so a checkpoint says how its model scored."""
    rewards = {k: v for k, v in metrics.items() if "reward" in k and isinstance(v, int | float)}
    return {**{k: metrics.get(k) for k in CHECKPOINT_METRICS}, **rewards}


# While this worker holds the lease, progress (events, metrics, checkpoints) may still land in these states:
# a pause takes effect at the next step, and a step already trained belongs to the resume point it leaves.
_HELD = (S.RUNNING, S.PAUSED, S.QUEUED)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DatabaseUnavailable(JobStopped):
    """The database stayed unreachable for the whole retry budget: the worker lets the job go without
    failing it; the reaper requeues it once the database is back (an outage costs the job no attempt)."""


def _spec(job: Job, resolved: catalog.ResolvedModel, attempt: int) -> JobSpec:
    hp_type = methods.get(job.method).hyperparameters
    hp = {k: v for k, v in job.hyperparameters.items() if k in hp_type.model_fields}
    return JobSpec(
        id=job.id,
        org=job.org_id,
        model=job.model,
        base=resolved.base,
        start_adapter=None if resolved.job_id is None else AdapterKey(resolved.job_id, resolved.step),
        training_file=job.training_file,
        validation_file=job.validation_file,
        suffix=job.suffix,
        seed=job.seed,
        hyperparameters=hp_type.model_validate(hp),
        extensions=FtserveExtensions.model_validate(job.extensions or {}),
        attempt=attempt,
        method=job.method,
        method_config=dict(job.method_config or {}),
    )


@dataclass(frozen=True)
class GangSeat:
    """A place in another worker's gang: the job, the claim it runs under, where its rendezvous is."""

    spec: JobSpec
    owner: str
    endpoint: str
    hosts: int


class TrainingStore:
    """Reads and writes one job for the worker that claims it; progress is written only under its lease."""

    def __init__(self, settings: Settings, job_id: str, owner: str | None = None) -> None:
        self.settings = settings
        self.job_id = job_id
        self.owner = owner or worker_id()
        self.attempt: int | None = None
        # The server ends a transaction left idle this long (a frozen worker), releasing the job row's lock.
        self._idle_ms = max(1000, int(settings.lease_seconds * 500))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    # -- transactions ----------------------------------------------------------------------------
    def _run(self, work: Callable[[Session], T], *, retry: bool = True) -> T:
        """Run work in one transaction; while the DB is unreachable, retry with backoff, then give up."""
        retrying = Retrying(
            retry=retry_if_exception(is_unavailable),
            wait=wait_exponential(multiplier=0.25, max=max(0.5, min(10.0, self.settings.heartbeat_seconds))),
            stop=stop_after_delay(self.settings.db_retry_seconds if retry else 0),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt, session_scope(self.settings, idle_in_transaction_ms=self._idle_ms) as s:
                    return work(s)
        except Exception as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable(None, f"database unreachable: {type(exc).__name__}") from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover - Retrying either returns or raises

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        name = type(exc).__name__
        log.warning("job %s: database unreachable (%s); retry %d", self.job_id, name, state.attempt_number)

    def _mine(self) -> tuple[Any, ...]:
        return (Job.id == self.job_id, Job.lease_owner == self.owner, Job.attempts == self.attempt)

    def _fence(self, s: Session, states: tuple[JobStatus, ...] = _HELD, **values: Any) -> JobStatus:
        """Lock the job row if this claim still holds it in one of `states` (renewing the lease and setting
        `values`), and return its status; else raise JobStopped saying why."""
        values.setdefault("lease_expires_at", time.time() + self.settings.lease_seconds)
        status = s.execute(
            update(Job)
            .where(*self._mine(), Job.status.in_(states))
            .values(**values)
            .returning(Job.status)
            .execution_options(synchronize_session=False)
        ).scalar()
        if status is None:
            raise self._why_stopped(s)
        return JobStatus(status)

    def _why_stopped(self, s: Session) -> JobStopped:
        row = s.execute(select(Job.status, Job.lease_owner, Job.attempts).where(Job.id == self.job_id)).first()
        if row is None:
            return JobStopped(None)
        if row.lease_owner != self.owner or row.attempts != self.attempt:
            return JobStopped(row.status, "lease lost")
        if row.status in (S.PAUSED, S.QUEUED):  # queued and still ours: paused, then resumed at once
            return JobStopped(row.status, f"paused ({row.status.value})", pause=True)
        return JobStopped(row.status)

    # -- the lease ---------------------------------------------------------------------------
    def claim(self) -> JobSpec | None:
        """Move queued → running under this worker's lease; None if the job is not ours to run (not queued,
        or another worker still holds its lease, e.g. a paused job being resumed on the worker that had it)."""

        def work(s: Session) -> JobSpec | None:
            job = s.get(Job, self.job_id)
            if job is None:
                return None
            at = time.time()
            try:
                resolved = catalog.resolve(s, self.settings, job.org_id, job.model)
                # Read the row as training will before taking it: one it cannot read fails now, never loops.
                spec = _spec(job, resolved, job.attempts + 1)
            except NotFound as gone:  # the starting model was deleted after the job was created
                _fail_queued(s, self.job_id, "model_not_found", gone.message, "model")
                return None
            except ValidationError as bad:
                message = f"The job's stored settings cannot be read: {bad.errors()[0]['msg']}"
                _fail_queued(s, self.job_id, "invalid_job", message, None)
                return None
            ok = job_state.transition(
                s,
                self.job_id,
                S.RUNNING,
                "Fine-tuning job started",
                only_from={S.QUEUED},
                where=[or_(Job.lease_owner.is_(None), Job.lease_expires_at.is_(None), Job.lease_expires_at < at)],
                lease_owner=self.owner,
                lease_expires_at=at + self.settings.lease_seconds,
                attempts=Job.attempts + 1,
                started_at=now(),
            )
            if not ok:
                return None
            attempt = int(s.scalar(select(Job.attempts).where(Job.id == self.job_id)) or 0)
            return replace(spec, attempt=attempt)

        spec = self._run(work)
        if spec is not None:
            self.attempt = spec.attempt
        return spec

    def adopt(self, attempt: int) -> None:
        """Write under a claim another process of this worker made (rank 0 of its torchrun gang): the same
        owner and attempt, so every write stays fenced by that claim."""
        self.attempt = attempt

    def gang_lost(self, reason: str) -> bool:
        """The gang training this claim died (a rank was killed): if the job is still running under it, end
        the lease now, so the reaper requeues the job as a lost worker and the next claim resumes it."""

        def work(s: Session) -> bool:
            try:
                self._fence(s, (S.RUNNING,), lease_expires_at=time.time() - 1.0)
            except JobStopped:
                return False
            job_state.add_event(s, self.job_id, f"The training gang stopped: {reason}", level="warn")
            return True

        return self._run(work)

    # -- a gang across hosts -------------------------------------------------------------------------
    def gang_started(self, processes: int, hosts: int, message: str) -> None:
        """Record the gang this claim trains on (processes, hosts) with its event; it closes the gang to joiners."""

        def work(s: Session) -> None:
            self._fence(s, gang_processes=processes, gang_hosts=hosts, gang_endpoint=None)
            data = {"processes": processes, "hosts": hosts, "processes_per_host": processes // hosts}
            job_state.add_event(s, self.job_id, message, data=data)

        self._run(work)

    def open_gang(self, endpoint: str, hosts: int) -> None:
        """Publish this claim's rendezvous endpoint: workers on other hosts may join until `hosts` are in."""

        def work(s: Session) -> None:
            self._fence(s, gang_endpoint=endpoint, gang_attempt=self.attempt, gang_hosts=hosts, gang_joined=1)
            job_state.add_event(
                s,
                self.job_id,
                f"Waiting for {hosts - 1} more worker host{'s' if hosts > 2 else ''} to join the gang at {endpoint}",
                data={"endpoint": endpoint, "hosts": hosts},
            )

        self._run(work)

    def gang_members(self) -> int:
        """How many hosts are in this claim's gang so far (renewing the lease; JobStopped if not ours)."""

        def work(s: Session) -> int:
            self._fence(s)
            return int(s.scalar(select(Job.gang_joined).where(Job.id == self.job_id)) or 0)

        return self._run(work)

    def close_gang(self) -> None:
        """No host may join any more (the gang is complete, or it gave up waiting)."""
        self._run(lambda s: s.execute(update(Job).where(*self._mine()).values(gang_endpoint=None)))

    def join_gang(self, attempt: int) -> GangSeat | None:
        """Take a place in the open gang of claim `attempt` of this job; None if it is not open (complete,
        given up, or the job moved on)."""

        def work(s: Session) -> GangSeat | None:
            row = s.execute(
                update(Job)
                .where(
                    Job.id == self.job_id,
                    Job.status == S.RUNNING,
                    Job.attempts == attempt,
                    Job.gang_attempt == attempt,
                    Job.gang_endpoint.is_not(None),
                    Job.gang_joined < Job.gang_hosts,
                )
                .values(gang_joined=Job.gang_joined + 1)
                .returning(Job.lease_owner, Job.gang_endpoint, Job.gang_hosts)
                .execution_options(synchronize_session=False)
            ).first()
            if row is None:
                return None
            job = s.get(Job, self.job_id)
            assert job is not None
            spec = _spec(job, catalog.resolve(s, self.settings, job.org_id, job.model), attempt)
            return GangSeat(spec, str(row.lease_owner), str(row.gang_endpoint), int(row.gang_hosts))

        return self._run(work)

    def start_heartbeat(self) -> None:
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        # A thread, not the training loop, renews the lease: a slow step or model load must not look dead.
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                if not self.renew_lease():
                    log.warning("job %s: lease lost; the heartbeat stops", self.job_id)
                    return
            except DatabaseUnavailable:
                log.warning("job %s: heartbeat could not reach the database", self.job_id)
            except Exception:
                log.exception("heartbeat failed for %s", self.job_id)

    def renew_lease(self) -> bool:
        """Extend this claim's lease (in any state short of finished); False once it is no longer ours."""

        def work(s: Session) -> bool:
            try:
                self._fence(s)
            except JobStopped:
                return False
            return True

        return self._run(work, retry=False)

    def check(self) -> None:
        """Raise JobStopped unless the job is still running under this worker's claim."""

        def work(s: Session) -> None:
            row = s.execute(select(Job.status, Job.lease_owner, Job.attempts).where(Job.id == self.job_id)).first()
            if (
                row is None
                or row.status is not S.RUNNING
                or (row.lease_owner, row.attempts)
                != (
                    self.owner,
                    self.attempt,
                )
            ):
                raise self._why_stopped(s)

        self._run(work)

    def pause_point_saved(self, step: int, place: Callable[[], None]) -> bool:
        """The worker saw a pause and staged a resume point at `step`: promote it (place) and, if the job was
        resumed meanwhile, take it back (True: keep training); else let the lease go (False: stop here)."""

        def work(s: Session) -> bool:
            status = self._fence(s)
            if status is S.RUNNING:
                return True
            place()
            if status is S.QUEUED:
                job_state.transition(
                    s,
                    self.job_id,
                    S.RUNNING,
                    f"Resume point saved at step {step}; the job was resumed and continues on the same worker",
                    only_from={S.QUEUED},
                    where=self._mine(),
                    data={"step": step},
                )
                return True
            s.execute(update(Job).where(*self._mine()).values(lease_owner=None, lease_expires_at=None))
            job_state.add_event(s, self.job_id, f"Paused at step {step}; resume point saved", data={"step": step})
            return False

        return self._run(work)

    # -- progress ----------------------------------------------------------------------------
    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        def work(s: Session) -> None:
            self._fence(s)
            job_state.add_event(s, self.job_id, message, level=level, data=data)

        self._run(work)

    def resolved_hyperparameters(self, hyperparameters: dict[str, Any], message: str, data: dict[str, Any]) -> None:
        """Record what "auto" resolved to (the job object shows it from now on) and say so in an event."""

        def work(s: Session) -> None:
            self._fence(s, hyperparameters=hyperparameters)
            job_state.add_event(s, self.job_id, message, data=data)

        self._run(work)

    def step(self, message: str, data: dict[str, Any], *, estimated_finish: int, trained_tokens: int) -> None:
        """A step's metrics event, with the job's running totals."""

        def work(s: Session) -> None:
            self._fence(s, estimated_finish=estimated_finish, trained_tokens=trained_tokens)
            job_state.add_event(s, self.job_id, message, type="metrics", data=data)

        self._run(work)

    def checkpoint(
        self,
        org: str,
        base: str,
        final_name: str,
        step: int,
        metrics: dict[str, Any],
        place: Callable[[], None],
        *,
        found: bool = False,
    ) -> str | None:
        """Promote a saved checkpoint (place) and register it as a servable model, keeping only the newest N;
        its model name, or None when the step was registered already. found: it was found on disk, saved by
        a worker that stopped before registering it."""
        name = checkpoint_model_name(final_name, step)

        def work(s: Session) -> str | None:
            self._fence(s)
            same_step = select(Checkpoint.id).where(Checkpoint.job_id == self.job_id, Checkpoint.step_number == step)
            if s.scalar(same_step) is not None:
                return None
            place()
            s.add(
                Checkpoint(
                    id=new_id("ftckpt-"),
                    job_id=self.job_id,
                    org_id=org,
                    created_at=now(),
                    step_number=step,
                    metrics=checkpoint_metrics(metrics),
                    fine_tuned_model_checkpoint=name,
                )
            )
            catalog.register(s, name, org, base, self.job_id, step)
            message = f"Checkpoint created at step {step}"
            if found:
                message = f"Checkpoint at step {step} found on disk and registered (saved before its worker stopped)"
            job_state.add_event(s, self.job_id, message, data={"model": name})
            s.flush()
            old = list(
                s.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.job_id == self.job_id)
                    .order_by(Checkpoint.step_number.desc())
                    .offset(self.settings.checkpoints_keep)
                )
            )
            catalog.delete_checkpoints(s, self.settings, old)
            return name

        return self._run(work)

    def finish(
        self, org: str, base: str, name: str, trained_tokens: int, result_csv: bytes, place: Callable[[], None]
    ) -> None:
        """Promote the final adapter (place), store the result CSV, register the model, running → succeeded.

        Raises JobStopped when the job is no longer running under this claim (cancelled, paused, lost):
        nothing is published then.
        """

        def work(s: Session) -> None:
            self._fence(s, (S.RUNNING,))
            place()
            result = file_service.create_result_file(s, self.settings, org, f"{self.job_id}-results.csv", result_csv)
            catalog.register(s, name, org, base, self.job_id, None)
            job_state.add_event(s, self.job_id, f"New fine-tuned model created: {name}")
            job_state.transition(
                s,
                self.job_id,
                S.SUCCEEDED,
                "The job has successfully completed",
                only_from={S.RUNNING},
                where=self._mine(),
                fine_tuned_model=name,
                trained_tokens=trained_tokens,
                result_files=[result.id],
            )

        self._run(work)

    def judge_authorization(self) -> str | None:
        """A key for the job's org, named for the job, when the server takes keys (its model graders' judge calls
        go through the serving path as the org, so tenancy holds)."""

        def work(s: Session) -> str | None:
            if not auth.keys_exist(s):
                return None
            org = s.scalar(select(Job.org_id).where(Job.id == self.job_id))
            return None if org is None else "Bearer " + auth.create_key(s, org, name=_judge_key_name(self.job_id))

        return self._run(work)

    def revoke_judge_authorization(self) -> None:
        def work(s: Session) -> None:
            s.execute(
                update(ApiKey)
                .where(ApiKey.name == _judge_key_name(self.job_id), ApiKey.revoked_at.is_(None))
                .values(revoked_at=now())
            )
            s.commit()

        self._run(work)

    def fail(self, code: str, message: str, param: str | None) -> bool:
        """→ failed with the job error {code, message, param}, if this claim still holds the job."""

        def work(s: Session) -> bool:
            return job_state.transition(
                s,
                self.job_id,
                S.FAILED,
                f"Fine-tuning job failed: {message}",
                level="error",
                only_from=set(_HELD),
                where=self._mine(),
                error={"code": code, "message": message, "param": param},
            )

        return self._run(work)
