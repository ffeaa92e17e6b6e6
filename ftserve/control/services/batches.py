"""Batches, the api side: create (checks, then commit; the inference role's runner picks it up), read, list,
cancel. The runner's own reads and writes are in app/services/batch_store.py."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ftserve.control.db.tables import Batch
from ftserve.control.services.files import get_file
from ftserve.control.services.pagination import page
from ftserve.core.endpoints import BATCH_ENDPOINTS as ENDPOINTS
from ftserve.core.endpoints import by_batch_format
from ftserve.core.errors import InvalidRequest, bad_request, not_found
from ftserve.core.ids import new_id, now
from ftserve.core.schemas.batches import BatchCreate, BatchError, BatchErrors, BatchObject, BatchRequestCounts

WINDOW_SECONDS = {"24h": 24 * 3600}


def to_wire(b: Batch) -> BatchObject:
    errors = None if not b.errors else BatchErrors(data=[BatchError(**e) for e in b.errors])
    return BatchObject(
        id=b.id,
        endpoint=b.endpoint,
        errors=errors,
        input_file_id=b.input_file_id,
        completion_window=b.completion_window,
        status=b.status,  # type: ignore[arg-type]
        output_file_id=b.output_file_id,
        error_file_id=b.error_file_id,
        created_at=b.created_at,
        in_progress_at=b.in_progress_at,
        expires_at=b.expires_at,
        finalizing_at=b.finalizing_at,
        completed_at=b.completed_at,
        failed_at=b.failed_at,
        expired_at=b.expired_at,
        cancelling_at=b.cancelling_at,
        cancelled_at=b.cancelled_at,
        request_counts=BatchRequestCounts(total=b.total, completed=b.completed, failed=b.failed),
        metadata=b.metadata_,
    )


def create_batch(session: Session, org: str, req: BatchCreate) -> Batch:
    """Check endpoint, window and input file; commit the batch as `validating` for a runner to claim."""
    if req.endpoint not in ENDPOINTS:
        raise bad_request(
            f"Unsupported endpoint '{req.endpoint}'; ftserve runs batches for {', '.join(ENDPOINTS)}",
            param="endpoint",
            code="unsupported_endpoint",
        )
    if req.completion_window not in WINDOW_SECONDS:
        raise bad_request(
            f"Unsupported completion_window '{req.completion_window}'; only '24h' is supported",
            param="completion_window",
        )
    f = get_file(session, org, req.input_file_id, "input_file_id")
    if f.purpose != "batch":
        raise bad_request(
            f"File {f.id} has purpose '{f.purpose}', not 'batch'", param="input_file_id", code="invalid_file_purpose"
        )
    if f.status != "processed":
        raise bad_request(
            f"File {f.id} is not a valid batch file: {f.status_details}", param="input_file_id", code="invalid_file"
        )
    if f.format != ENDPOINTS[req.endpoint].batch_format:
        other = by_batch_format(f.format or "")
        called = other.path if other else f.format
        raise bad_request(
            f"The requests in file {f.id} are for {called}, but the batch's endpoint is {req.endpoint}",
            param="endpoint",
            code="endpoint_mismatch",
        )
    created = now()
    batch = Batch(
        id=new_id("batch_"),
        org_id=org,
        endpoint=req.endpoint,
        input_file_id=f.id,
        completion_window=req.completion_window,
        status="validating",
        metadata_=req.metadata,
        total=f.n_examples,
        completed=0,
        failed=0,
        created_at=created,
        expires_at=created + WINDOW_SECONDS[req.completion_window],
    )
    session.add(batch)
    session.commit()
    session.refresh(batch)
    return batch


def get_batch(session: Session, org: str, batch_id: str) -> Batch:
    b = session.get(Batch, batch_id)
    if b is None or b.org_id != org:
        raise not_found("batch", batch_id)
    return b


def list_batches(session: Session, org: str, after: str | None, limit: int) -> tuple[list[Batch], bool]:
    """Newest first."""
    return page(session, select(Batch).where(Batch.org_id == org), Batch, after=after, limit=limit)


def cancel_batch(session: Session, org: str, batch_id: str) -> Batch:
    """validating/in_progress → cancelling; the runner stops it and writes what finished (→ cancelled)."""
    b = get_batch(session, org, batch_id)
    # Compare-and-set: the runner may be moving it to finalizing at this very moment.
    moved = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(("validating", "in_progress")))
        .values(status="cancelling", cancelling_at=now())
    )
    session.commit()
    session.refresh(b)
    if moved.rowcount == 0 and b.status not in ("cancelling", "cancelled"):  # type: ignore[attr-defined]
        raise InvalidRequest(
            f"Batch {batch_id} is {b.status}; it cannot be cancelled", param="batch_id", code="batch_not_cancellable"
        )
    return b
