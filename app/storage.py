"""Blob store on local disk; every path derives from a service-made id, never a client's file name.

Writers stage an object privately (an upload's `.part`, an adapter's `.NAME.tmp-PID` directory) and then
promote it into place in one rename, so a reader never sees half of one. What a crash leaves staged, or
promoted but never recorded in the DB, is listed here for the orphan sweep (app/services/orphans.py)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Written last into an adapter directory: a reader never uses one without it (it may be half-written).
COMPLETE = "FTSERVE_COMPLETE"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FINAL = "final"
RESUME = "resume"  # a paused job's resume point
_CHECKPOINT = re.compile(r"^ckpt-step-(\d+)$")
_STAGED = re.compile(r"^\..+\.tmp-\d+(-old)?$")
_UPLOAD = re.compile(r"^(file-[A-Za-z0-9_-]+)\.(jsonl|part)$")


class UploadTooLarge(Exception):
    """The upload passed the byte cap while streaming."""


def _checked(ident: str) -> str:
    # Ids come from our own generator; this guard makes a forged one unable to escape the data dir.
    if not _SAFE_ID.match(ident):
        raise ValueError(f"unsafe storage id: {ident!r}")
    return ident


@dataclass(frozen=True)
class StoredUpload:
    """A stored file blob: its file id, whether it is still a partial upload, and when it was last written."""

    file_id: str
    partial: bool
    modified: float


@dataclass(frozen=True)
class JobEntry:
    """One entry of a job's folder: kind is final | checkpoint | resume | staged (step for checkpoints)."""

    name: str
    kind: str
    step: int | None
    complete: bool
    modified: float


class Storage:
    """Paths and atomic writes under the data dir."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.resolved_data_dir()

    def file_path(self, file_id: str) -> Path:
        return self.root / "files" / f"{_checked(file_id)}.jsonl"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / _checked(job_id)

    def adapter_dir(self, job_id: str, step: int | None) -> Path:
        """The final adapter (step None) or the checkpoint at a step."""
        name = FINAL if step is None else f"ckpt-step-{int(step)}"
        return self.job_dir(job_id) / name

    def resume_dir(self, job_id: str) -> Path:
        """Where a paused job keeps the adapter and trainer state it continues from."""
        return self.job_dir(job_id) / RESUME

    async def save_upload(self, file_id: str, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[int, str]:
        """Stream chunks to the file's path; returns (bytes, sha256). Nothing is left behind on error."""
        dest = self.file_path(file_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadTooLarge(size)
                    digest.update(chunk)
                    out.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def write_bytes(self, file_id: str, data: bytes) -> tuple[int, str]:
        dest = self.file_path(file_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return len(data), hashlib.sha256(data).hexdigest()

    def delete_file(self, file_id: str) -> None:
        self.file_path(file_id).unlink(missing_ok=True)

    def delete_partial_upload(self, file_id: str) -> None:
        self.file_path(file_id).with_suffix(".part").unlink(missing_ok=True)

    def adapter_if_complete(self, job_id: str, step: int | None) -> Path | None:
        """The adapter directory if every file of it was written (its completion marker exists), else None."""
        path = self.adapter_dir(job_id, step)
        return path if is_complete(path) else None

    def delete_adapter(self, job_id: str, step: int | None) -> None:
        shutil.rmtree(self.adapter_dir(job_id, step), ignore_errors=True)

    # -- staging: write aside, then promote in one rename -------------------------------------
    def staging_dir(self, target: Path) -> Path:
        """A private sibling of target for this process to write into (empty; nobody reads it)."""
        staged = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staged, ignore_errors=True)
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def promote(self, staged: Path, target: Path) -> None:
        """Move a finished staging directory into place, replacing an older target; a repeat is a no-op."""
        if not staged.exists():
            if is_complete(target):
                return  # promoted already (a retried transaction runs this again)
            raise FileNotFoundError(f"nothing staged at {staged}")
        old = target.with_name(f"{staged.name}-old")
        if target.exists():
            os.replace(target, old)  # a directory cannot be renamed over a non-empty one
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    # -- listing, for the orphan sweep -----------------------------------------------------------
    def uploads(self) -> list[StoredUpload]:
        """Every stored file blob, complete or partial."""
        folder = self.root / "files"
        if not folder.is_dir():
            return []
        out = []
        for path in folder.iterdir():
            match = _UPLOAD.match(path.name)
            if match and path.is_file():
                out.append(StoredUpload(match.group(1), match.group(2) == "part", _mtime(path)))
        return out

    def job_ids(self) -> list[str]:
        """Every job that has a folder."""
        folder = self.root / "jobs"
        if not folder.is_dir():
            return []
        return [p.name for p in folder.iterdir() if p.is_dir() and _SAFE_ID.match(p.name)]

    def job_entries(self, job_id: str) -> list[JobEntry]:
        """What a job's folder holds: adapters by kind, and staging directories a writer left."""
        folder = self.job_dir(job_id)
        if not folder.is_dir():
            return []
        out = []
        for path in folder.iterdir():
            name = path.name
            if not path.is_dir():
                continue
            step_match = _CHECKPOINT.match(name)
            if step_match:
                kind, step = "checkpoint", int(step_match.group(1))
            elif name in (FINAL, RESUME):
                kind, step = name, None
            elif _STAGED.match(name):
                kind, step = "staged", None
            else:
                continue
            out.append(JobEntry(name, kind, step, is_complete(path), _mtime(path)))
        return out

    def delete_job_entry(self, job_id: str, name: str) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"unsafe entry name: {name!r}")
        shutil.rmtree(self.job_dir(job_id) / name, ignore_errors=True)

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def is_complete(path: Path) -> bool:
    """An adapter directory the exporter finished: completion marker and safetensors weights present."""
    return (path / COMPLETE).exists() and (path / ADAPTER_WEIGHTS).exists()
