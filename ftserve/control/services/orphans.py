"""The orphan sweep: delete what a crash leaves in storage that nothing refers to, once it is older than
settings.orphan_grace_seconds (an upload or adapter still being written is touched more recently).

Swept: file blobs with no DB row (the api died after the body arrived), partial uploads, staged adapter
directories (a worker died while saving), a job's folder with no job, and the adapters of finished jobs
that nothing lists (unregistered checkpoints, a resume point, an unpublished final adapter). A complete
checkpoint of a job that may still run is kept: the job's next worker registers it on resume. Uploads API
uploads past their expiry are marked expired, and the parts of finished uploads (completed, cancelled,
expired: none is read again) go at once, those of uploads with no row after the grace period. Stored Responses
API responses past FTSERVE_RESPONSES_RETENTION_DAYS are deleted (they already read as deleted)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ftserve.control.db.tables import Checkpoint, File, Job, Upload
from ftserve.control.services import uploads
from ftserve.control.services.response_store import purge_expired
from ftserve.core.config import Settings
from ftserve.core.job_status import TERMINAL, JobStatus
from ftserve.core.storage import JobEntry, Storage

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep deleted, by kind."""

    uploads: list[str] = field(default_factory=list)
    partial_uploads: list[str] = field(default_factory=list)
    staged: list[str] = field(default_factory=list)
    job_dirs: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    upload_parts: list[str] = field(default_factory=list)  # upload ids whose parts were deleted
    responses: int = 0  # stored responses past their retention (a count: there may be many)

    def total(self) -> int:
        kinds = (self.uploads, self.partial_uploads, self.staged, self.job_dirs, self.adapters, self.upload_parts)
        return sum(len(v) for v in kinds) + self.responses


def sweep(session: Session, settings: Settings, now: float) -> SweepReport:
    """Delete orphans older than the grace period; safe beside running uploads, workers and other sweeps."""
    storage = Storage(settings)
    cutoff = now - settings.orphan_grace_seconds
    report = SweepReport()
    _sweep_uploads(session, storage, cutoff, report)
    report.upload_parts = _sweep_upload_parts(session, settings, storage, now)
    for job_id in storage.job_ids():
        _sweep_job(session, storage, job_id, cutoff, report)
    report.responses = purge_expired(session, settings, now)
    if report.total():
        log.warning("orphan sweep deleted %s", report)
    return report


def _sweep_uploads(session: Session, storage: Storage, cutoff: float, report: SweepReport) -> None:
    old = [u for u in storage.uploads() if u.modified < cutoff]
    for upload in (u for u in old if u.partial):
        storage.delete_partial_upload(upload.file_id)
        report.partial_uploads.append(upload.file_id)
    complete = [u.file_id for u in old if not u.partial]
    known = set(session.scalars(select(File.id).where(File.id.in_(complete)))) if complete else set()
    for file_id in complete:
        if file_id not in known:
            storage.delete_file(file_id)
            report.uploads.append(file_id)


def _sweep_job(session: Session, storage: Storage, job_id: str, cutoff: float, report: SweepReport) -> None:
    entries = [e for e in storage.job_entries(job_id) if e.modified < cutoff]
    if not entries:
        return
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        if all(e.modified < cutoff for e in storage.job_entries(job_id)):
            storage.delete_job(job_id)
            report.job_dirs.append(job_id)
        return
    registered = set(session.scalars(select(Checkpoint.step_number).where(Checkpoint.job_id == job_id)))
    for entry in entries:
        if entry.kind == "staged":
            storage.delete_job_entry(job_id, entry.name)
            report.staged.append(f"{job_id}/{entry.name}")
        elif JobStatus(status) in TERMINAL and _unreferenced(entry, JobStatus(status), registered):
            storage.delete_job_entry(job_id, entry.name)
            report.adapters.append(f"{job_id}/{entry.name}")


def _unreferenced(entry: JobEntry, status: JobStatus, registered: set[int]) -> bool:
    """An adapter of a finished job that no model or checkpoint row refers to (and never will)."""
    if entry.kind == "checkpoint":
        return entry.step not in registered
    if entry.kind == "final":
        return status is not JobStatus.SUCCEEDED
    return entry.kind == "resume"


def _expire_uploads(session: Session, settings: Settings, at: float) -> list[str]:
    """Mark pending uploads past their expiry expired (and a complete that died long ago); their ids."""
    stuck = at - settings.orphan_grace_seconds
    open_past_expiry = (Upload.status == uploads.PENDING) & (Upload.expires_at <= at)
    died_completing = (Upload.status == uploads.COMPLETING) & (Upload.expires_at <= stuck)
    due = open_past_expiry | died_completing
    ids = list(session.scalars(select(Upload.id).where(due)))
    if ids:
        session.execute(update(Upload).where(Upload.id.in_(ids), due).values(status=uploads.EXPIRED))
        session.commit()
    return ids


def _sweep_upload_parts(session: Session, settings: Settings, storage: Storage, at: float) -> list[str]:
    """Delete the parts of finished uploads (completed, cancelled, expired) and, once older than the grace
    period, of uploads with no row; the upload ids whose parts went."""
    _expire_uploads(session, settings, at)
    stored = storage.upload_dirs()
    if not stored:
        return []
    ids = [upload_id for upload_id, _ in stored]
    status = {r.id: r.status for r in session.execute(select(Upload.id, Upload.status).where(Upload.id.in_(ids)))}
    cutoff = at - settings.orphan_grace_seconds
    swept = []
    for upload_id, modified in stored:
        known = status.get(upload_id)
        if known in uploads.FINISHED or (known is None and modified < cutoff):
            try:
                storage.delete_upload(upload_id)
            except Exception:  # a part still being written into a finished upload: the next sweep takes it
                log.warning("could not delete the parts of %s yet", upload_id, exc_info=True)
                continue
            swept.append(upload_id)
    return swept
