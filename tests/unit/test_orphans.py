"""The orphan sweep on a real SQLite DB and data dir: what a crash leaves is deleted after the grace period,
everything the DB refers to (or a resumable job may still register) is kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Checkpoint, File
from ftserve.control.services.reaper import DbWatch, reap_once
from ftserve.core.config import Settings
from ftserve.core.ids import new_id, now
from ftserve.core.storage import ADAPTER_WEIGHTS, COMPLETE, Storage
from tests.jobrows import make_job

OLD = time.time() - 2 * 3600  # older than the default grace period (1 h)


def _age(path: Path, at: float = OLD) -> Path:
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (at, at))
    return path


def _blob(storage: Storage, name: str, old: bool = True) -> Path:
    path = storage.root / "files" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n' * 1000)
    return _age(path) if old else path


def _adapter(storage: Storage, job_id: str, name: str, complete: bool = True, old: bool = True) -> Path:
    path = storage.job_dir(job_id) / name
    path.mkdir(parents=True)
    (path / ADAPTER_WEIGHTS).write_bytes(b"w")
    if complete:
        (path / COMPLETE).write_text("ok\n")
    return _age(path) if old else path


def _file_row(settings: Settings, file_id: str) -> None:
    with session_scope(settings) as s:
        row = File(id=file_id, org_id="o", filename="t", purpose="fine-tune", created_at=now(), status="processed")
        s.add(row)


def _checkpoint_row(settings: Settings, job_id: str, step: int) -> None:
    with session_scope(settings) as s:
        s.add(
            Checkpoint(
                id=new_id("ftckpt-"),
                job_id=job_id,
                org_id="personal",
                created_at=now(),
                step_number=step,
                metrics={},
                fine_tuned_model_checkpoint=f"ft:x:ckpt-step-{step}",
            )
        )


def test_the_sweep_deletes_what_crashes_leave_and_keeps_the_rest(settings: Settings) -> None:
    storage = Storage(settings)
    kept: list[Path] = []
    # uploads: a row-less blob (api killed after the body arrived), partial uploads, and their young twins
    _file_row(settings, "file-known")
    kept.append(_blob(storage, "file-known.jsonl"))
    gone = [_blob(storage, "file-nobody.jsonl"), _blob(storage, "file-dead.part")]
    kept += [_blob(storage, "file-uploading.part", old=False), _blob(storage, "file-validating.jsonl", old=False)]
    # a job that may still run: staged directories go, a complete unregistered checkpoint stays for its resume
    queued = make_job(settings, "queued")
    gone.append(_adapter(storage, queued, ".ckpt-step-3.tmp-4242", complete=False))
    gone.append(_adapter(storage, queued, ".final.tmp-7"))
    kept += [_adapter(storage, queued, "ckpt-step-6"), _adapter(storage, queued, "resume")]
    kept.append(_adapter(storage, queued, ".ckpt-step-9.tmp-99", complete=False, old=False))  # being written now
    # a finished job: what nothing refers to goes, registered checkpoints stay
    failed = make_job(settings, "failed")
    _checkpoint_row(settings, failed, 3)
    kept.append(_adapter(storage, failed, "ckpt-step-3"))
    gone += [_adapter(storage, failed, name) for name in ("ckpt-step-6", "resume", "final")]
    succeeded = make_job(settings, "succeeded")
    kept.append(_adapter(storage, succeeded, "final"))
    gone.append(_adapter(storage, succeeded, "ckpt-step-12"))
    # a folder whose job does not exist at all
    gone.append(_age(_adapter(storage, "ftjob-vanished", "final").parent))

    report = reap_once(settings, watch=DbWatch()).swept  # the first pass (at start-up) sweeps
    assert report is not None
    assert [p for p in gone if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert sorted(report.uploads) == ["file-nobody"] and report.partial_uploads == ["file-dead"]
    assert len(report.staged) == 2 and report.job_dirs == ["ftjob-vanished"] and len(report.adapters) == 4


def test_the_sweep_runs_once_per_interval(settings: Settings) -> None:
    storage = Storage(settings)
    watch = DbWatch()
    assert reap_once(settings, watch=watch).swept is not None
    orphan = _blob(storage, "file-later.jsonl")
    assert reap_once(settings, watch=watch).swept is None and orphan.exists()  # not yet: once per interval
    later = time.time() + settings.orphan_sweep_seconds + 1
    swept = reap_once(settings, now=later, watch=watch).swept
    assert swept is not None and swept.uploads == ["file-later"] and not orphan.exists()
