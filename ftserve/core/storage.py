"""Every artifact in the object store (a local directory or s3://…, app/blobstore.py), by keys that derive
from service-made ids only, never a client's file name: `files/{file-id}.jsonl`, `jobs/{job-id}/final`,
`…/ckpt-step-N`, `…/resume`, `…/{name}` for a job's own files, `uploads/{upload-id}/{part-id}` for the
Uploads API's parts.

Writers publish whole objects: an upload appears when its last part is written, an adapter directory when
its completion marker is (writers stage it on local disk and promote it, inside the training store's fenced
transaction). Readers on a host whose store is remote get local copies through a bounded cache. What a crash
leaves staged, or published but never recorded in the DB, is listed here for the orphan sweep."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ftserve.core.blobstore import COMPLETE, BlobStore, StorageUnavailable
from ftserve.core.config import Settings
from ftserve.core.filecache import FileCache

__all__ = ["COMPLETE", "JobEntry", "Storage", "StorageUnavailable", "StoredUpload", "UploadTooLarge", "is_complete"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FINAL = "final"
RESUME = "resume"  # a paused job's resume point
_CHECKPOINT = re.compile(r"^ckpt-step-(\d+)$")
_STAGED = re.compile(r"^\..+\.tmp-\d+(-old)?$")
_UPLOAD = re.compile(r"^(file-[A-Za-z0-9_-]+)\.(jsonl|part)$")
_JOB_FILE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_COPY_CHUNK = 1024 * 1024


class UploadTooLarge(Exception):
    """The upload passed the byte cap while streaming."""


def _checked(ident: str) -> str:
    # Ids come from our own generator; this guard makes a forged one unable to escape the store's root.
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
    """Keys, streaming writes and reads, published directories and local copies, over one object store."""

    def __init__(self, settings: Settings) -> None:
        self.blobs = BlobStore(settings.resolved_storage_url())
        self.remote = self.blobs.remote
        self.cache = FileCache(settings.resolved_cache_dir(), settings.cache_max_bytes)
        # Local staging: beside the target on a local store (promotion is one rename), else the cache's disk.
        self.scratch = settings.resolved_cache_dir() / "staging"

    def check(self) -> None:
        """Raise StorageUnavailable (naming the URL) unless the store answers."""
        self.blobs.check()

    def ensure(self) -> None:
        """Create the store (a directory, or the bucket) if needed; `ftserve migrate` does it once."""
        self.blobs.ensure()

    # -- keys ------------------------------------------------------------------------------------
    @staticmethod
    def file_key(file_id: str) -> str:
        return f"files/{_checked(file_id)}.jsonl"

    @staticmethod
    def job_key(job_id: str) -> str:
        return f"jobs/{_checked(job_id)}"

    def adapter_key(self, job_id: str, step: int | None) -> str:
        """The final adapter (step None) or the checkpoint at a step."""
        return f"{self.job_key(job_id)}/{FINAL if step is None else f'ckpt-step-{int(step)}'}"

    def resume_key(self, job_id: str) -> str:
        """Where a paused job keeps the adapter and trainer state it continues from."""
        return f"{self.job_key(job_id)}/{RESUME}"

    # Local paths, for a local store only (tests, benchmarks and tools that inspect the data dir).
    def _local(self, key: str) -> Path:
        local = self.blobs.local_path(key)
        if local is None:
            raise ValueError(f"{self.blobs.url} is remote: {key} has no path on this host")
        return local

    @property
    def root(self) -> Path:
        return Path(self._local("x")).parent

    def file_path(self, file_id: str) -> Path:
        return self._local(self.file_key(file_id))

    def job_dir(self, job_id: str) -> Path:
        return self._local(self.job_key(job_id))

    def adapter_dir(self, job_id: str, step: int | None) -> Path:
        return self._local(self.adapter_key(job_id, step))

    def resume_dir(self, job_id: str) -> Path:
        return self._local(self.resume_key(job_id))

    def job_file_key(self, job_id: str, name: str) -> str:
        if not _JOB_FILE.match(name) or name.startswith("."):
            raise ValueError(f"unsafe job file name: {name!r}")
        return f"{self.job_key(job_id)}/{name}"

    # -- files -----------------------------------------------------------------------------------
    async def save_upload(self, file_id: str, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[int, str]:
        """Stream chunks into the store (multipart on S3); returns (bytes, sha256). Nothing appears on error."""
        return await self._save(self.file_key(file_id), chunks, max_bytes)

    async def _save(self, key: str, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with self.blobs.writer(key) as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(size)
                digest.update(chunk)
                # A remote store uploads a part when its buffer fills: never block the event loop for it.
                await asyncio.to_thread(out.write, chunk) if self.remote else out.write(chunk)
        return size, digest.hexdigest()

    def write_bytes(self, file_id: str, data: bytes) -> tuple[int, str]:
        self.blobs.put_bytes(self.file_key(file_id), data)
        return len(data), hashlib.sha256(data).hexdigest()

    def open_file(self, file_id: str) -> IO[bytes]:
        """A file's bytes as a stream (for downloads)."""
        return self.blobs.reader(self.file_key(file_id))

    def local_file(self, file_id: str) -> Path:
        """A path on this host holding the file: the store's own on a local store, else a cached copy."""
        key = self.file_key(file_id)
        local = self.blobs.local_path(key)
        return local if local is not None else self.cache.file(self.blobs, key)

    def delete_file(self, file_id: str) -> None:
        key = self.file_key(file_id)
        self.blobs.delete(key)
        self.cache.drop(key)

    def delete_partial_upload(self, file_id: str) -> None:
        local = self.blobs.local_path(f"files/{_checked(file_id)}.part")
        if local is not None:
            local.unlink(missing_ok=True)

    # -- the Uploads API: parts, composed into a file on complete ---------------------------------
    # Each part is its own object (`uploads/{upload-id}/{part-id}`), written as it streams in, and complete
    # copies the listed parts in order into `files/{file-id}.jsonl` through the same writer as any upload
    # (bounded memory: one read chunk, plus one S3 multipart part of PART_BYTES on a remote store). Parts
    # are not sent straight into one S3 multipart upload because that cannot hold what the API allows: S3
    # needs every part but the last to be at least 5 MiB while the SDK's part_size may be anything, S3's part
    # numbers are fixed when a part is sent while the order is only known at complete (part_ids), and a part
    # may be left out of it. Composing costs one more pass over the bytes, inside the store's network.
    @staticmethod
    def upload_key(upload_id: str) -> str:
        return f"uploads/{_checked(upload_id)}"

    def part_key(self, upload_id: str, part_id: str) -> str:
        return f"{self.upload_key(upload_id)}/{_checked(part_id)}"

    async def save_part(self, upload_id: str, part_id: str, chunks: AsyncIterator[bytes], max_bytes: int) -> int:
        """Stream one part into the store; its bytes. UploadTooLarge past max_bytes (nothing is left then)."""
        size, _ = await self._save(self.part_key(upload_id, part_id), chunks, max_bytes)
        return size

    def compose(self, file_id: str, upload_id: str, part_ids: list[str]) -> tuple[int, str, str]:
        """Write the parts, in order, as the file's blob; (bytes, sha256, md5). Nothing appears on error."""
        sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        size = 0
        with self.blobs.writer(self.file_key(file_id)) as out:
            for part_id in part_ids:
                with self.blobs.reader(self.part_key(upload_id, part_id)) as src:
                    while chunk := src.read(_COPY_CHUNK):
                        size += len(chunk)
                        sha.update(chunk)
                        md5.update(chunk)
                        out.write(chunk)
        return size, sha.hexdigest(), md5.hexdigest()

    def delete_upload(self, upload_id: str) -> None:
        """Remove an upload's parts (all of them; a repeat is a no-op)."""
        self.blobs.delete_dir(self.upload_key(upload_id))

    def upload_dirs(self) -> list[tuple[str, float]]:
        """(upload id, newest part's modification time) of every upload with parts in the store."""
        return [(name, modified) for name, modified in self.blobs.listing("uploads") if _SAFE_ID.match(name)]

    # -- adapters and a job's other files ---------------------------------------------------------
    def adapter_if_complete(self, job_id: str, step: int | None) -> Path | None:
        """A local directory with every file of the adapter (its completion marker written), else None."""
        path = self.directory(self.adapter_key(job_id, step))
        return path if path is not None and is_complete(path) else None

    def directory(self, key: str, fresh: bool = False) -> Path | None:
        """A complete local copy of a published directory, None if there is none; `fresh` for one that is
        rewritten in place (a resume point), which is never served from an older copy."""
        local = self.blobs.local_path(key)
        if local is not None:
            return local if (local / COMPLETE).exists() else None
        if fresh:
            self.cache.drop(key)
        return self.cache.directory(self.blobs, key)

    def delete_adapter(self, job_id: str, step: int | None) -> None:
        self.delete_dir(self.adapter_key(job_id, step))

    def delete_dir(self, key: str) -> None:
        self.blobs.delete_dir(key)
        self.cache.drop(key)

    def job_file(self, job_id: str, name: str) -> Path:
        """Where this host reads and writes one of a job's own files (e.g. DPO's reference log-probs): the
        store's own path on a local store; else a fresh local copy of the stored one (if any), to write
        back with publish_job_file."""
        key = self.job_file_key(job_id, name)
        local = self.blobs.local_path(key)
        if local is not None:
            return local
        self.cache.drop(key)
        try:
            return self.cache.file(self.blobs, key)
        except FileNotFoundError:
            path = self.cache.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            return path

    def publish_job_file(self, job_id: str, name: str, path: Path) -> None:
        """Store a job's file written at `path` (a no-op when `path` is the store's own)."""
        key = self.job_file_key(job_id, name)
        if self.blobs.local_path(key) == path:
            return
        with path.open("rb") as src, self.blobs.writer(key) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)

    # -- staging: write aside on local disk, then promote whole ----------------------------------
    def staging_dir(self, key: str) -> Path:
        """A private, empty local directory for this process to write `key`'s directory into."""
        local = self.blobs.local_path(key)
        parent, name = (local.parent, local.name) if local is not None else (self.scratch, key.replace("/", "__"))
        staged = parent / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        return staged

    def promote(self, staged: Path, key: str) -> None:
        """Publish a finished staging directory as `key`, replacing an older one; a repeat is a no-op."""
        if not staged.exists():
            if self.blobs.is_complete(key):
                return  # promoted already (a retried transaction runs this again)
            raise FileNotFoundError(f"nothing staged at {staged}")
        target = self.blobs.local_path(key)
        if target is None:
            self.blobs.put_dir(staged, key)
            shutil.rmtree(staged, ignore_errors=True)
            self.cache.drop(key)
            return
        (staged / COMPLETE).write_text("ok\n")
        old = target.with_name(f"{staged.name}-old")
        if target.exists():
            os.replace(target, old)  # a directory cannot be renamed over a non-empty one
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    # -- listing, for resume points and the orphan sweep -----------------------------------------
    def uploads(self) -> list[StoredUpload]:
        """Every stored file blob, complete or partial."""
        out = []
        for name, modified in self.blobs.listing("files"):
            match = _UPLOAD.match(name)
            if match:
                out.append(StoredUpload(match.group(1), match.group(2) == "part", modified))
        return out

    def job_ids(self) -> list[str]:
        """Every job that has a folder."""
        return [name for name, _ in self.blobs.listing("jobs") if _SAFE_ID.match(name)]

    def job_entries(self, job_id: str) -> list[JobEntry]:
        """What a job's folder holds: adapters by kind, and staging directories a writer left."""
        out = []
        prefix = self.job_key(job_id)
        for name, modified in self.blobs.listing(prefix):
            step_match = _CHECKPOINT.match(name)
            if step_match:
                kind, step = "checkpoint", int(step_match.group(1))
            elif name in (FINAL, RESUME):
                kind, step = name, None
            elif _STAGED.match(name):
                kind, step = "staged", None
            else:
                continue
            complete = kind != "staged" and self.blobs.is_complete(f"{prefix}/{name}")
            out.append(JobEntry(name, kind, step, complete, modified))
        return out

    def delete_job_entry(self, job_id: str, name: str) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"unsafe entry name: {name!r}")
        self.delete_dir(f"{self.job_key(job_id)}/{name}")

    def delete_job(self, job_id: str) -> None:
        self.delete_dir(self.job_key(job_id))

    @contextlib.contextmanager
    def spooled(self) -> Iterator[Path]:
        """A private local file for a writer to fill before it is stored (removed afterwards)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.scratch)
        os.close(fd)
        try:
            yield Path(name)
        finally:
            Path(name).unlink(missing_ok=True)


def is_complete(path: Path) -> bool:
    """An adapter directory the exporter finished: completion marker and safetensors weights present."""
    return (path / COMPLETE).exists() and (path / ADAPTER_WEIGHTS).exists()
