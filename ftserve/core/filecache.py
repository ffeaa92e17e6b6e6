"""This host's copies of objects read from a remote store, bounded in bytes and evicted least recently used.

Only immutable things are cached by key (a checkpoint or final adapter never changes once complete; an
uploaded file never changes): a copy is either complete (its directory has the completion marker, or the
file is in place) or absent. Nothing here is the only copy of anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from ftserve.core.blobstore import COMPLETE, BlobStore


class FileCache:
    """Local copies of store keys under `root`, at most `max_bytes` of them (the newest use is kept)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def _locked(self, key: str) -> contextlib.AbstractContextManager[None]:
        # One download per key at a time, across the processes of this host (workers, inference).
        return file_lock(self.root / ".locks" / key.replace("/", "__"))

    def directory(self, store: BlobStore, prefix: str) -> Path | None:
        """A complete local copy of the store's directory at `prefix`; None when the store has no complete one."""
        local = self.root / prefix
        if (local / COMPLETE).exists():
            _touch(local)
            return local
        with self._locked(prefix):
            if not (local / COMPLETE).exists():
                if not store.is_complete(prefix):
                    return None
                store.get_dir(prefix, local)
        self.evict(keep=local)
        return local

    def file(self, store: BlobStore, key: str) -> Path:
        """A local copy of one object (FileNotFoundError when the store has none)."""
        local = self.root / key
        if local.exists():
            _touch(local)
            return local
        with self._locked(key):
            if not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
                try:
                    with store.reader(key) as src, tmp.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1024 * 1024)
                    os.replace(tmp, local)
                finally:
                    tmp.unlink(missing_ok=True)
        self.evict(keep=local)
        return local

    def drop(self, key: str) -> None:
        """Forget a key's copy (its object was deleted from the store)."""
        local = self.root / key
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        else:
            local.unlink(missing_ok=True)

    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, last use) of every cached directory and file, oldest use first."""
        out = []
        for top in ("files", "jobs"):
            base = self.root / top
            if not base.is_dir():
                continue
            for path in base.rglob("*"):
                if path.name.startswith("."):
                    continue
                if path.is_dir() and (path / COMPLETE).exists():
                    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
                    out.append((path, size, (path / COMPLETE).stat().st_mtime))
                elif path.is_file() and path.parent.name == "files":
                    out.append((path, path.stat().st_size, path.stat().st_mtime))
        return sorted(out, key=lambda e: e[2])

    def evict(self, keep: Path | None = None) -> int:
        """Delete the least recently used copies until the cache fits; bytes freed."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        freed = 0
        for path, size, _ in entries:
            if total - freed <= self.max_bytes:
                break
            if path == keep:
                continue  # the copy a caller is about to use, even if it alone is over the limit
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            freed += size
        return freed


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created with its folder), held across this host's processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _touch(path: Path) -> None:
    # The marker's (or file's) mtime is the last use; eviction goes oldest first.
    target = path / COMPLETE if path.is_dir() else path
    with contextlib.suppress(OSError):
        now = time.time()
        os.utime(target, (now, now))
