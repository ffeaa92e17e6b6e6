"""Uploads (OpenAI's Uploads API): a file sent in parts, each streamed to storage as it arrives, composed in
the order complete lists them into one File, validated like any upload of its purpose.

States: pending → completed | cancelled | expired (past expires_at, also shown so before the sweep marks it).
`completing` holds an upload while its complete runs (shown as pending), so a second complete or a cancel
cannot race it; every change is a compare-and-set on the status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ftserve.control.db.tables import File, Upload, UploadPart
from ftserve.control.services.files import check_purpose, register_stored
from ftserve.control.services.files import to_wire as file_to_wire
from ftserve.core.config import Settings
from ftserve.core.errors import InvalidRequest, PayloadTooLarge, ServerFault, bad_request, not_found, quote
from ftserve.core.ids import new_id, now
from ftserve.core.schemas.uploads import (
    JSONL_MIME_TYPES,
    UploadComplete,
    UploadCreate,
    UploadObject,
    UploadPartObject,
)
from ftserve.core.storage import Storage, UploadTooLarge

log = logging.getLogger(__name__)

_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
PENDING, COMPLETING, COMPLETED, CANCELLED, EXPIRED = "pending", "completing", "completed", "cancelled", "expired"
FINISHED = (COMPLETED, CANCELLED, EXPIRED)


def wire_status(row: Upload, at: int) -> str:
    """The status a client sees: an open upload past its expiry is expired, a complete in progress pending."""
    if row.status in (PENDING, COMPLETING) and at >= row.expires_at:
        return EXPIRED
    return PENDING if row.status == COMPLETING else row.status


def to_wire(row: Upload, file: File | None = None) -> UploadObject:
    return UploadObject(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        expires_at=row.expires_at,
        filename=row.filename,
        purpose=row.purpose,
        status=wire_status(row, now()),  # type: ignore[arg-type]
        file=file_to_wire(file) if file is not None else None,
    )


def part_to_wire(part: UploadPart) -> UploadPartObject:
    return UploadPartObject(id=part.id, created_at=part.created_at, upload_id=part.upload_id)


def create_upload(session: Session, settings: Settings, org: str, body: UploadCreate) -> Upload:
    """A pending upload of `body.bytes` bytes, open for parts until its expiry."""
    check_purpose(body.purpose)
    mime = body.mime_type.split(";", 1)[0].strip().lower()
    if mime not in JSONL_MIME_TYPES:
        raise bad_request(
            f"Invalid mime_type {quote(body.mime_type)} for purpose {quote(body.purpose)}: ftserve takes JSONL "
            f"files ({', '.join(JSONL_MIME_TYPES)})",
            param="mime_type",
            code="invalid_mime_type",
        )
    if body.bytes > settings.max_upload_total_bytes:
        raise bad_request(
            f"bytes={body.bytes} is larger than the upload limit of {settings.max_upload_total_bytes} bytes",
            param="bytes",
            code="upload_too_large",
        )
    created = now()
    row = Upload(
        id=new_id("upload_"),
        org_id=org,
        filename=body.filename,
        purpose=body.purpose,
        mime_type=mime,
        bytes=body.bytes,
        status=PENDING,
        received_bytes=0,
        created_at=created,
        expires_at=created + settings.upload_expiry_seconds,
    )
    session.add(row)
    session.commit()
    return row


def get_upload(session: Session, org: str, upload_id: str, fresh: bool = False) -> Upload:
    """The org's upload (404 for another org's, as for a missing one); `fresh`: re-read after a change."""
    row = session.get(Upload, upload_id, populate_existing=fresh)
    if row is None or row.org_id != org:
        raise not_found("upload", upload_id)
    return row


def refused(row: Upload, action: str) -> InvalidRequest:
    """Why an upload that is not pending cannot `action` (its status as the client sees it, as the code)."""
    status = wire_status(row, now())
    if row.status == COMPLETING and status == PENDING:
        message = f"Upload {quote(row.id)} is being completed: it cannot {action}"
        return InvalidRequest(message, param="upload_id", code="upload_completing")
    return InvalidRequest(
        f"Upload {quote(row.id)} is {status}: it cannot {action}", param="upload_id", code=f"upload_{status}"
    )


async def add_part(
    session: Session, settings: Settings, org: str, upload_id: str, chunks: AsyncIterator[bytes]
) -> UploadPart:
    """Stream one part into storage and record it; refused unless the upload is pending, and past the part
    or upload caps (413)."""
    row = get_upload(session, org, upload_id)
    if wire_status(row, now()) != PENDING or row.status != PENDING:
        raise refused(row, "accept parts")
    room = settings.max_upload_total_bytes - row.received_bytes
    limit = min(settings.max_upload_part_bytes, room)
    session.commit()  # hold no transaction open while the part streams in
    storage = Storage(settings)
    part_id = new_id("part_")
    try:
        size = await storage.save_part(upload_id, part_id, chunks, limit)
    except UploadTooLarge:
        raise _too_large(settings, room) from None
    except FileNotFoundError:
        # The upload was cancelled or expired while this part streamed, and its parts were swept.
        raise refused(get_upload(session, org, upload_id, fresh=True), "accept parts") from None
    at = now()
    counted = session.execute(
        update(Upload)
        .where(
            Upload.id == upload_id,
            Upload.status == PENDING,
            Upload.expires_at > at,
            Upload.received_bytes + size <= settings.max_upload_total_bytes,
        )
        .values(received_bytes=Upload.received_bytes + size)
    )
    if not counted.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        await asyncio.to_thread(_forget_part, storage, upload_id, part_id)
        row = get_upload(session, org, upload_id, fresh=True)
        if wire_status(row, at) != PENDING or row.status != PENDING:
            raise refused(row, "accept parts")
        raise _too_large(settings, settings.max_upload_total_bytes - row.received_bytes)
    part = UploadPart(id=part_id, upload_id=upload_id, bytes=size, created_at=at)
    session.add(part)
    try:
        session.commit()
    except BaseException:
        _forget_part(storage, upload_id, part_id)
        raise
    return part


def part_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Part is larger than the part limit of {limit} bytes", param="data", code="part_too_large")


def _too_large(settings: Settings, room: int) -> PayloadTooLarge:
    if room >= settings.max_upload_part_bytes:
        return part_too_large(settings.max_upload_part_bytes)
    return PayloadTooLarge(
        f"The upload's parts would pass the upload limit of {settings.max_upload_total_bytes} bytes "
        f"({max(room, 0)} bytes left)",
        param="data",
        code="upload_too_large",
    )


def _forget_part(storage: Storage, upload_id: str, part_id: str) -> None:
    with contextlib.suppress(Exception):
        storage.blobs.delete(storage.part_key(upload_id, part_id))


def _listed_parts(session: Session, row: Upload, body: UploadComplete) -> list[UploadPart]:
    """The parts complete names, in its order: each once, each a part of this upload, adding up to bytes."""
    seen: set[str] = set()
    for i, part_id in enumerate(body.part_ids):
        if part_id in seen:
            raise bad_request(
                f"part_ids[{i}]: part {quote(part_id)} is listed twice", param="part_ids", code="duplicate_part_id"
            )
        seen.add(part_id)
    found = {
        p.id: p
        for p in session.scalars(
            select(UploadPart).where(UploadPart.upload_id == row.id, UploadPart.id.in_(body.part_ids))
        )
    }
    for i, part_id in enumerate(body.part_ids):
        if part_id not in found:
            raise bad_request(
                f"part_ids[{i}]: no part {quote(part_id)} in upload {quote(row.id)}",
                param="part_ids",
                code="part_not_found",
            )
    total = sum(found[p].bytes for p in body.part_ids)
    if total != row.bytes:
        raise bad_request(
            f"The listed parts add up to {total} bytes, but upload {quote(row.id)} was created with "
            f"bytes={row.bytes}: the two must be equal",
            param="part_ids",
            code="bytes_mismatch",
        )
    if body.md5 is not None and not _MD5.match(body.md5):
        raise bad_request(f"md5 must be 32 hexadecimal digits, not {quote(body.md5)}", param="md5", code="invalid_md5")
    return [found[p] for p in body.part_ids]


async def complete_upload(
    session: Session, settings: Settings, org: str, upload_id: str, body: UploadComplete
) -> tuple[Upload, File]:
    """Compose the listed parts into a File, validate it like an upload of the purpose, and complete the
    upload; a file that fails validation is kept with status=error (a 400 naming the line) and the upload
    stays pending."""
    row = get_upload(session, org, upload_id)
    if wire_status(row, now()) != PENDING or row.status != PENDING:
        raise refused(row, "be completed")
    parts = _listed_parts(session, row, body)
    row = _take_pending(session, org, upload_id, COMPLETING, "be completed")
    storage = Storage(settings)
    file_id = new_id("file-")
    try:
        size, sha, md5 = await asyncio.to_thread(storage.compose, file_id, upload_id, [p.id for p in parts])
        if size != row.bytes:
            raise ServerFault(f"Upload {quote(upload_id)}: its stored parts hold {size} bytes, not {row.bytes}")
        if body.md5 is not None and md5 != body.md5.lower():
            raise bad_request(
                f"md5 {quote(body.md5)} does not match the uploaded bytes (their md5 is {md5})",
                param="md5",
                code="md5_mismatch",
            )

        def settle(file: File) -> None:
            row.status = COMPLETED if file.status == "processed" else PENDING
            row.file_id = file.id if file.status == "processed" else None

        file = await register_stored(
            session, settings, storage, org, file_id, row.filename, row.purpose, size, sha, before_commit=settle
        )
    except InvalidRequest as exc:
        if exc.param == "file":  # validation failed: the error File and the pending upload are committed
            raise
        await asyncio.to_thread(storage.delete_file, file_id)
        _reopen(session, upload_id)
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(storage.delete_file, file_id)
            _reopen(session, upload_id)
        raise
    await asyncio.to_thread(_drop_parts, storage, upload_id)
    return row, file


def _take_pending(session: Session, org: str, upload_id: str, status: str, action: str) -> Upload:
    """Move a pending, unexpired upload to `status` in one compare-and-set (so a concurrent complete or cancel
    loses); the upload re-read, or the 400 saying why it cannot `action`."""
    taken = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == PENDING, Upload.expires_at > now())
        .values(status=status)
    )
    session.commit()
    row = get_upload(session, org, upload_id, fresh=True)
    if not taken.rowcount:  # type: ignore[attr-defined]
        raise refused(row, action)
    return row


def _reopen(session: Session, upload_id: str) -> None:
    session.rollback()
    session.execute(update(Upload).where(Upload.id == upload_id, Upload.status == COMPLETING).values(status=PENDING))
    session.commit()


def _drop_parts(storage: Storage, upload_id: str) -> None:
    """Delete a finished upload's parts now; what fails here (the store down) the orphan sweep deletes later."""
    try:
        storage.delete_upload(upload_id)
    except Exception:
        log.warning("could not delete the parts of %s; the orphan sweep will", upload_id, exc_info=True)


async def cancel_upload(session: Session, settings: Settings, org: str, upload_id: str) -> Upload:
    """Cancel a pending upload and delete its parts; refused once it is completed, cancelled or expired."""
    get_upload(session, org, upload_id)  # another org's upload is a 404 before anything changes
    row = _take_pending(session, org, upload_id, CANCELLED, "be cancelled")
    await asyncio.to_thread(_drop_parts, Storage(settings), upload_id)
    return row


def completed_file(session: Session, row: Upload) -> File | None:
    return session.get(File, row.file_id) if row.file_id else None
