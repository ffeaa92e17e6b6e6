"""Blob store on local disk; every path derives from a service-made id, never a client's file name."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from app.config import Settings

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Written last into an adapter directory: a reader never uses one without it (it may be half-written).
COMPLETE = "FTSERVE_COMPLETE"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class UploadTooLarge(Exception):
    """The upload passed the byte cap while streaming."""


def _checked(ident: str) -> str:
    # Ids come from our own generator; this guard makes a forged one unable to escape the data dir.
    if not _SAFE_ID.match(ident):
        raise ValueError(f"unsafe storage id: {ident!r}")
    return ident


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
        name = "final" if step is None else f"ckpt-step-{int(step)}"
        return self.job_dir(job_id) / name

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

    def adapter_if_complete(self, job_id: str, step: int | None) -> Path | None:
        """The adapter directory if every file of it was written (its completion marker exists), else None."""
        path = self.adapter_dir(job_id, step)
        return path if is_complete(path) else None

    def delete_adapter(self, job_id: str, step: int | None) -> None:
        shutil.rmtree(self.adapter_dir(job_id, step), ignore_errors=True)


def is_complete(path: Path) -> bool:
    """An adapter directory the exporter finished: completion marker and safetensors weights present."""
    return (path / COMPLETE).exists() and (path / ADAPTER_WEIGHTS).exists()
