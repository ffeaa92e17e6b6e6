"""Files: store uploads, validate training data line by line, list, read and delete them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ftserve.control.db.tables import File
from ftserve.control.services.pagination import page
from ftserve.core.config import Settings
from ftserve.core.datasets.batch import validate_batch_file
from ftserve.core.datasets.formats import DatasetError
from ftserve.core.datasets.validate import validate_file
from ftserve.core.endpoints import BATCH_ENDPOINTS as ENDPOINTS
from ftserve.core.errors import InvalidRequest, PayloadTooLarge, bad_request, not_found, quote
from ftserve.core.evals.items import count_eval_lines
from ftserve.core.ids import new_id, now
from ftserve.core.schemas.files import UPLOAD_PURPOSES, FileObject
from ftserve.core.storage import Storage, UploadTooLarge


def to_wire(f: File) -> FileObject:
    return FileObject(
        id=f.id,
        bytes=f.bytes,
        created_at=f.created_at,
        filename=f.filename,
        purpose=f.purpose,
        status=f.status,  # type: ignore[arg-type]
        # The reason of an error; on a processed training file, a warning (unknown keys ignored) or None.
        status_details=f.status_details,
        extensions={"error_code": f.error_code, "error_line": f.error_line} if f.status == "error" else None,
    )


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"File is larger than the upload limit of {limit} bytes; send larger files in parts through the "
        f"Uploads API (/v1/uploads, the SDK's client.uploads.upload_file_chunked)",
        param="file",
        code="file_too_large",
    )


async def create_upload(
    session: Session,
    settings: Settings,
    org: str,
    filename: str,
    purpose: str,
    chunks: AsyncIterator[bytes],
) -> File:
    """Stream an upload to storage and validate it; a bad training file is kept with status=error and
    answered with a 400 that names the code and line."""
    check_purpose(purpose)
    storage = Storage(settings)
    file_id = new_id("file-")
    try:
        size, sha = await storage.save_upload(file_id, chunks, settings.max_upload_bytes)
    except UploadTooLarge:
        raise too_large(settings.max_upload_bytes) from None
    return await register_stored(session, settings, storage, org, file_id, filename, purpose, size, sha)


def check_purpose(purpose: str, param: str = "purpose") -> None:
    """A 400 naming the purposes ftserve accepts, unless `purpose` is one of them."""
    if purpose not in UPLOAD_PURPOSES:
        raise bad_request(
            f"Invalid purpose {quote(purpose)}; ftserve accepts: {', '.join(UPLOAD_PURPOSES)}",
            param=param,
            code="invalid_purpose",
        )


async def register_stored(
    session: Session,
    settings: Settings,
    storage: Storage,
    org: str,
    file_id: str,
    filename: str,
    purpose: str,
    size: int,
    sha: str,
    before_commit: Callable[[File], None] | None = None,
) -> File:
    """Validate a blob stored as `file_id` by its purpose and record it (processed, or error with a 400 that
    names the code and line); `before_commit` sees the row first, to commit its caller's changes with it."""
    row = File(
        id=file_id,
        org_id=org,
        filename=filename[:512] or "upload.jsonl",
        purpose=purpose,
        bytes=size,
        sha256=sha,
        created_at=now(),
        status="uploaded",
    )
    try:
        fmt, count, warning = await asyncio.to_thread(lambda: _validate(storage.local_file(file_id), purpose, settings))
    except DatasetError as err:
        row.status, row.status_details = "error", err.describe()
        row.error_code, row.error_line = err.code, err.line
        _commit(session, storage, row, before_commit)
        kind = {"batch": "batch", "evals": "evals"}.get(purpose, "training")
        raise InvalidRequest(
            f"Invalid {kind} file {file_id} ({row.filename}): {err.describe()}", param="file", code=err.code
        ) from None
    # A valid file whose lines carry keys their format does not read is accepted (as OpenAI does) and says so.
    row.status, row.status_details, row.format, row.n_examples = "processed", warning, fmt, count
    _commit(session, storage, row, before_commit)
    return row


def _commit(session: Session, storage: Storage, row: File, before: Callable[[File], None] | None = None) -> None:
    """Record the stored upload; if that fails (the database is down), remove the blob too: the client
    gets an error and uploads again, and no file is left without a row."""
    session.add(row)
    if before is not None:
        before(row)
    try:
        session.commit()
    except BaseException:
        storage.delete_file(row.id)
        raise


def _validate(path: Path, purpose: str, settings: Settings) -> tuple[str, int, str | None]:
    """(format, examples or requests, a warning for status_details or None) of an upload, checked line by line
    by its purpose; DatasetError if bad."""
    if purpose == "batch":
        batch = validate_batch_file(path, settings.max_line_bytes, settings.max_batch_requests)
        return ENDPOINTS[batch.url].batch_format or "", batch.n_requests, None
    if purpose == "evals":  # each item is checked against its eval's item_schema when a run reads it
        return "evals", count_eval_lines(path, settings.max_line_bytes), None
    summary = validate_file(path, settings.max_line_bytes, settings.min_training_examples)
    return summary.format, summary.n_examples, summary.warning


def create_result_file(session: Session, settings: Settings, org: str, filename: str, data: bytes) -> File:
    """Store a service-made file (e.g. a job's result CSV) as purpose fine-tune-results."""
    file_id = new_id("file-")
    size, sha = Storage(settings).write_bytes(file_id, data)
    row = File(
        id=file_id,
        org_id=org,
        filename=filename,
        purpose="fine-tune-results",
        bytes=size,
        sha256=sha,
        created_at=now(),
        status="processed",
    )
    session.add(row)
    return row


def get_file(session: Session, org: str, file_id: str, param: str | None = None) -> File:
    row = session.get(File, file_id)
    if row is None or row.org_id != org:
        raise not_found("file", file_id, param)
    return row


def list_files(
    session: Session, org: str, *, purpose: str | None, after: str | None, limit: int, order: str
) -> tuple[list[File], bool]:
    stmt = select(File).where(File.org_id == org)
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    return page(session, stmt, File, after=after, limit=limit, descending=order != "asc")


def delete_file(session: Session, settings: Settings, org: str, file_id: str) -> None:
    row = get_file(session, org, file_id)
    session.delete(row)
    session.commit()
    Storage(settings).delete_file(file_id)
