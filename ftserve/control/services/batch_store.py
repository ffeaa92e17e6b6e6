"""The batch runner's door to the DB: claim a batch under a lease, renew it, record finished requests (so a
restart never redoes one), and finish the batch with its output and error files. Every write is fenced by
the lease: a runner that lost its batch to another process can no longer change it."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, or_, select, update

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Batch, BatchResult, File
from ftserve.core.config import Settings
from ftserve.core.ids import new_id, now
from ftserve.core.storage import Storage
from ftserve.serving.ports import BatchLost, ClaimedBatch, Result

# A batch a runner may hold: new, running, being cancelled, or finalizing when its runner died.
ACTIVE = ("validating", "in_progress", "cancelling", "finalizing")


def runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SqlBatchStore:
    """Serving's BatchStore port on the DB: the batches one runner claims; every write checks the lease is
    still its own."""

    def __init__(self, settings: Settings, owner: str) -> None:
        self.settings = settings
        self.owner = owner

    def _mine(self, batch_id: str) -> Any:
        return (Batch.id == batch_id) & (Batch.lease_owner == self.owner)

    def claim(self) -> ClaimedBatch | None:
        """The oldest active batch whose lease is free or expired, now leased to this runner; None if none."""
        t = time.time()
        free = or_(Batch.lease_owner.is_(None), Batch.lease_expires_at < t)
        with session_scope(self.settings) as s:
            for b in s.scalars(select(Batch).where(Batch.status.in_(ACTIVE), free).order_by(Batch.created_at).limit(8)):
                won = s.execute(
                    update(Batch)
                    .where(Batch.id == b.id, Batch.status == b.status, free)
                    .values(lease_owner=self.owner, lease_expires_at=t + self.settings.batch_lease_seconds)
                )
                if won.rowcount == 1:  # type: ignore[attr-defined]
                    return ClaimedBatch(b.id, b.org_id, b.endpoint, b.input_file_id, b.status, b.expires_at)
        return None

    def start(self, batch_id: str, total: int) -> None:
        """validating → in_progress with its request count."""
        self._update(batch_id, ("validating",), status="in_progress", in_progress_at=now(), total=total)

    def fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        """The batch cannot run (its input file is gone or unreadable): failed, with the reasons."""
        self._update(
            batch_id, ACTIVE, status="failed", failed_at=now(), errors=errors, lease_owner=None, lease_expires_at=None
        )

    def renew(self, batch_id: str) -> str:
        """Extend the lease; returns the batch's status (the api may have moved it to cancelling)."""
        with session_scope(self.settings) as s:
            done = s.execute(
                update(Batch)
                .where(self._mine(batch_id))
                .values(lease_expires_at=time.time() + self.settings.batch_lease_seconds)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise BatchLost(batch_id)
            status = s.scalar(select(Batch.status).where(Batch.id == batch_id))
        return str(status)

    def release(self, batch_id: str) -> None:
        """Give the lease up (this process is stopping), so the next runner takes over at once."""
        with session_scope(self.settings) as s:
            s.execute(update(Batch).where(self._mine(batch_id)).values(lease_owner=None, lease_expires_at=None))

    def finished_lines(self, batch_id: str) -> set[int]:
        """Lines already recorded: a restarted batch skips them."""
        with session_scope(self.settings) as s:
            return set(s.scalars(select(BatchResult.line).where(BatchResult.batch_id == batch_id)))

    def record(self, batch_id: str, results: Iterable[Result]) -> str:
        """Store finished requests and their counts, renew the lease, in one transaction; returns the status."""
        results = list(results)
        ok = sum(r.ok for r in results)
        with session_scope(self.settings) as s:
            done = s.execute(
                update(Batch)
                .where(self._mine(batch_id))
                .values(
                    completed=Batch.completed + ok,
                    failed=Batch.failed + len(results) - ok,
                    lease_expires_at=time.time() + self.settings.batch_lease_seconds,
                )
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise BatchLost(batch_id)
            s.add_all(
                BatchResult(batch_id=batch_id, line=r.line, ok=r.ok, record=json.dumps(r.record)) for r in results
            )
            status = s.scalar(select(Batch.status).where(Batch.id == batch_id))
        return str(status)

    def finalizing(self, batch_id: str) -> None:
        self._update(batch_id, ("in_progress",), status="finalizing", finalizing_at=now())

    def finish(self, batch_id: str, org: str, status: str, unrun: list[dict[str, Any]]) -> None:
        """Write the output file (successes) and the error file (failures, then `unrun` lines) in line order,
        register them, and move the batch to `status` (completed, cancelled or expired), all or nothing."""
        storage = Storage(self.settings)
        created: list[File] = []
        with session_scope(self.settings) as s:
            for ok, kind in ((True, "output"), (False, "error")):
                rows = s.execute(
                    select(BatchResult.line, BatchResult.record)
                    .where(BatchResult.batch_id == batch_id, BatchResult.ok == ok)
                    .order_by(BatchResult.line)
                )
                lines = [record for _, record in rows] + ([] if ok else [json.dumps(r) for r in unrun])
                if lines:
                    created.append(self._write_file(storage, org, f"{batch_id}_{kind}.jsonl", lines))
            fields: dict[str, Any] = {f"{status}_at": now(), "lease_owner": None, "lease_expires_at": None}
            for f in created:
                fields["output_file_id" if f.filename.endswith("_output.jsonl") else "error_file_id"] = f.id
            done = s.execute(update(Batch).where(self._mine(batch_id)).values(status=status, **fields))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                for f in created:
                    storage.delete_file(f.id)
                raise BatchLost(batch_id)
            s.add_all(created)
            s.execute(delete(BatchResult).where(BatchResult.batch_id == batch_id))

    def _write_file(self, storage: Storage, org: str, name: str, lines: list[str]) -> File:
        """A purpose=batch_output file holding these JSON lines (written before the DB row that names it)."""
        file_id = new_id("file-")
        size, sha = storage.write_bytes(file_id, "".join(line + "\n" for line in lines).encode())
        return File(
            id=file_id,
            org_id=org,
            filename=name,
            purpose="batch_output",
            bytes=size,
            sha256=sha,
            created_at=now(),
            status="processed",
            n_examples=len(lines),
        )

    def _update(self, batch_id: str, only_from: tuple[str, ...], **values: Any) -> None:
        with session_scope(self.settings) as s:
            done = s.execute(update(Batch).where(self._mine(batch_id), Batch.status.in_(only_from)).values(**values))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise BatchLost(batch_id)
