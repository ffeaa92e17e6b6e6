"""Objects by key under one URL, a local directory or `s3://bucket/prefix`, through fsspec.

Every artifact goes through here: uploads stream in with bounded memory (multipart on S3), directories
(adapters, checkpoints) are published file by file with a completion marker written last, so a reader
that checks the marker never sees half of one. Transient failures are retried with backoff; a store
that stays unreachable is a StorageUnavailable naming the URL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import fsspec
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

COMPLETE = "FTSERVE_COMPLETE"
# Multipart part size on S3: the memory an upload in progress holds (S3's minimum part size).
PART_BYTES = 5 * 1024 * 1024


class StorageUnavailable(Exception):
    """The object store cannot be reached (after retries)."""

    def __init__(self, url: str, cause: BaseException) -> None:
        super().__init__(f"The object store at {url} is unreachable or unusable: {type(cause).__name__}: {cause}")
        self.url = url


def _transient(exc: BaseException) -> bool:
    # Missing objects are answers, not outages; connection and server errors are worth another try.
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        return False
    return isinstance(exc, OSError | ConnectionError | TimeoutError) or type(exc).__module__.startswith(
        ("botocore", "aiobotocore", "aiohttp")
    )


def _retrying(attempts: int) -> Any:
    return retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )


class BlobStore:
    """Keys like `files/file-….jsonl` or `jobs/ftjob-…/final/adapter_config.json` under one URL."""

    def __init__(self, url: str, attempts: int = 5) -> None:
        self.url = url.rstrip("/")
        parsed = urlparse(self.url)
        self.remote = parsed.scheme not in ("", "file")
        if self.remote:
            options: dict[str, Any] = {"default_block_size": PART_BYTES}
            if os.environ.get("AWS_ENDPOINT_URL"):
                # S3-compatible servers (Swift, Ceph, SeaweedFS, Garage) rarely have wildcard DNS for buckets.
                options["config_kwargs"] = {"s3": {"addressing_style": "path"}}
            self.fs = fsspec.filesystem(parsed.scheme, **options)
            self.root = f"{parsed.netloc}{parsed.path}".rstrip("/")
        else:
            self.fs = fsspec.filesystem("file")
            self.root = str(Path(parsed.path if parsed.scheme else self.url).expanduser().resolve())
        self._retry = _retrying(attempts)

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def local_path(self, key: str) -> Path | None:
        """Where the object lives on this host's disk, for a local store; None for a remote one."""
        return None if self.remote else Path(self.path(key))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._retry(fn)(*args, **kwargs)
        except Exception as exc:
            if _transient(exc):
                raise StorageUnavailable(self.url, exc) from exc
            raise

    # -- checks -------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise StorageUnavailable unless the store answers (a listing of its root)."""
        if not self.remote:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            return
        bucket = self.root.split("/", 1)[0]
        try:
            self._retrying_ls(bucket)
        except FileNotFoundError as exc:
            raise StorageUnavailable(self.url, FileNotFoundError(f"bucket '{bucket}' does not exist")) from exc

    def ensure(self) -> None:
        """Create the store's root (a local directory, or the S3 bucket) if it does not exist yet."""
        if not self.remote:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            return
        bucket = self.root.split("/", 1)[0]
        if not self._call(self.fs.exists, bucket):
            self._call(self.fs.mkdir, bucket)
        self.check()

    def _retrying_ls(self, path: str) -> list[str]:
        return list(self._call(self.fs.ls, path, detail=False))

    # -- single objects -----------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return bool(self._call(self.fs.exists, self.path(key)))

    def size(self, key: str) -> int:
        return int(self._call(self.fs.size, self.path(key)))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """A binary file to write the object through; it appears under its key only when closed cleanly."""
        if not self.remote:
            dest = Path(self.path(key))
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
            try:
                with tmp.open("wb") as fh:
                    yield fh
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            return
        # s3fs uploads in PART_BYTES parts and completes the multipart upload on close; an error before
        # that aborts it, so no partial object is ever visible.
        fh = self._call(self.fs.open, self.path(key), "wb", block_size=PART_BYTES)
        try:
            yield fh
        except BaseException:
            with contextlib.suppress(Exception):
                fh.discard()  # aborts the multipart upload
                fh.closed = True  # nothing left to flush when the object is collected
            raise
        self._call(fh.close)

    def reader(self, key: str) -> IO[bytes]:
        return self._call(self.fs.open, self.path(key), "rb")  # type: ignore[no-any-return]

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as fh:
            fh.write(data)

    def get_bytes(self, key: str) -> bytes:
        return bytes(self._call(self.fs.cat_file, self.path(key)))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(self.fs.rm, self.path(key))

    # -- directories (adapters, checkpoints) --------------------------------------------------
    def names(self, prefix: str) -> list[str]:
        """Keys of the objects and sub-prefixes directly under `prefix` (names only, no recursion)."""
        try:
            found = self._retrying_ls(self.path(prefix))
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found)

    def listing(self, prefix: str) -> list[tuple[str, float]]:
        """(name, last modified) of each object or sub-directory directly under `prefix`; a sub-directory's
        time is its newest object's on a remote store (where directories exist only as key prefixes)."""
        if not self.remote:
            folder = Path(self.path(prefix))
            if not folder.is_dir():
                return []
            out = []
            for entry in os.scandir(folder):
                with contextlib.suppress(FileNotFoundError):
                    out.append((entry.name, entry.stat().st_mtime))
            return sorted(out)
        try:
            found = self._call(self.fs.find, self.path(prefix), detail=True)
        except FileNotFoundError:
            return []
        newest: dict[str, float] = {}
        base = self.path(prefix).rstrip("/") + "/"
        for path, info in found.items():
            name = path[len(base) :].split("/", 1)[0] if path.startswith(base) else ""
            modified = info.get("LastModified") or info.get("mtime")
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
            if name:
                newest[name] = max(newest.get(name, 0.0), stamp)
        return sorted(newest.items())

    def is_complete(self, prefix: str) -> bool:
        return self.exists(f"{prefix}/{COMPLETE}")

    def put_dir(self, local: Path, prefix: str) -> None:
        """Publish a local directory under `prefix`: every file, then the completion marker last.

        On a local store the directory is written aside and renamed into place, so it appears whole.
        """
        if not self.remote:
            dest = Path(self.path(prefix))
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(local, tmp)
            (tmp / COMPLETE).write_text("ok\n")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            return
        self.delete_dir(prefix)  # an earlier, interrupted publish of the same prefix
        for f in sorted(p for p in local.rglob("*") if p.is_file() and p.name != COMPLETE):
            self._call(self.fs.put_file, str(f), self.path(f"{prefix}/{f.relative_to(local).as_posix()}"))
        self.put_bytes(f"{prefix}/{COMPLETE}", b"ok\n")

    def get_dir(self, prefix: str, local: Path) -> None:
        """Copy a complete directory to `local` (replaced whole); FileNotFoundError if it is not complete."""
        if not self.is_complete(prefix):
            raise FileNotFoundError(f"{self.path(prefix)} is missing or incomplete")
        tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for name in self.names(prefix):
                self._call(self.fs.get_file, self.path(f"{prefix}/{name}"), str(tmp / name))
            shutil.rmtree(local, ignore_errors=True)
            os.replace(tmp, local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def delete_dir(self, prefix: str) -> None:
        """Remove a directory, its completion marker first, so no reader takes a half-deleted one."""
        self.delete(f"{prefix}/{COMPLETE}")
        with contextlib.suppress(FileNotFoundError):
            self._call(self.fs.rm, self.path(prefix), recursive=True)
