"""The worker's only door to the DB while training: events, metrics, lease heartbeat, cancellation."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from sqlalchemy import select, update

from app.config import get_settings
from app.db.models import Job
from app.db.session import session_scope
from app.services import job_state

log = logging.getLogger(__name__)


def lease_seconds() -> float:
    return get_settings().lease_seconds


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobStopped(Exception):
    """The job is no longer ours to train (cancelled, or its lease went to another worker)."""


class Reporter:
    """Writes a job's progress, but only while this worker still holds the job's lease."""

    def __init__(self, job_id: str, owner: str) -> None:
        self.job_id = job_id
        self.owner = owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def start_heartbeat(self) -> None:
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        # A thread, not the training loop, renews the lease: a slow step or model load must not look dead.
        while not self._stop.wait(get_settings().heartbeat_seconds):
            try:
                self.renew_lease()
            except Exception:
                log.exception("heartbeat failed for %s", self.job_id)

    def renew_lease(self) -> bool:
        with session_scope() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == "running", Job.lease_owner == self.owner)
                .values(lease_expires_at=time.time() + lease_seconds())
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def check(self) -> None:
        """Raise JobStopped unless the job is still running under this worker's lease."""
        with session_scope() as s:
            row = s.execute(select(Job.status, Job.lease_owner).where(Job.id == self.job_id)).first()
        if row is None or row.status != "running" or row.lease_owner != self.owner:
            raise JobStopped(row.status if row else "deleted")

    def event(
        self,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
        **job_fields: Any,
    ) -> None:
        with session_scope() as s:
            if job_fields:
                s.execute(update(Job).where(Job.id == self.job_id, Job.lease_owner == self.owner).values(**job_fields))
            job_state.add_event(s, self.job_id, message, level=level, type=type, data=data)
