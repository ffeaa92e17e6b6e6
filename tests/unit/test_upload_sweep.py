"""The Uploads API's side of the orphan sweep, on a real SQLite DB and data dir: a pending upload past its
expiry is marked expired and its parts deleted; parts of cancelled and completed uploads go at once, parts
with no upload row after the grace period; an open upload's parts stay."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Upload
from ftserve.control.services import uploads
from ftserve.control.services.reaper import DbWatch, reap_once
from ftserve.core.config import Settings
from ftserve.core.errors import InvalidRequest
from ftserve.core.schemas.uploads import UploadCreate
from ftserve.core.storage import Storage

OLD = time.time() - 2 * 3600  # older than the default grace period (1 h)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _upload_with_part(settings: Settings, status: str, expires_in: int = 3600) -> tuple[str, Path]:
    """An upload with one stored part, then put in `status` with its expiry `expires_in` seconds away."""
    body = UploadCreate(bytes=3, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    with session_scope(settings) as s:
        upload_id = uploads.create_upload(s, settings, "personal", body).id
        part = asyncio.run(uploads.add_part(s, settings, "personal", upload_id, _one(b"abc")))
        row = s.get(Upload, upload_id)
        assert row is not None
        row.status, row.expires_at = status, int(time.time()) + expires_in
    part_path = Storage(settings).root / "uploads" / upload_id / part.id
    assert part_path.read_bytes() == b"abc"
    return upload_id, part_path


def _status(settings: Settings, upload_id: str) -> str:
    with session_scope(settings) as s:
        row = s.get(Upload, upload_id)
        assert row is not None
        return row.status


def test_the_sweep_expires_uploads_and_deletes_the_parts_of_finished_ones(settings: Settings) -> None:
    expired, expired_part = _upload_with_part(settings, "pending", expires_in=-1)
    cancelled, cancelled_part = _upload_with_part(settings, "cancelled")
    completed, completed_part = _upload_with_part(settings, "completed")
    open_, open_part = _upload_with_part(settings, "pending")
    rowless = Storage(settings).root / "uploads" / "upload_nobody"
    (rowless / "part_x").parent.mkdir(parents=True)
    (rowless / "part_x").write_bytes(b"x")
    young_rowless = Storage(settings).root / "uploads" / "upload_young"
    young_rowless.mkdir()
    (young_rowless / "part_y").write_bytes(b"y")
    os.utime(rowless, (OLD, OLD))

    report = reap_once(settings, watch=DbWatch()).swept
    assert report is not None
    assert sorted(report.upload_parts) == sorted([expired, cancelled, completed, "upload_nobody"])
    assert _status(settings, expired) == "expired" and _status(settings, open_) == "pending"
    assert not any(p.exists() for p in (expired_part, cancelled_part, completed_part, rowless))
    assert open_part.exists() and young_rowless.exists()


def test_an_expired_upload_refuses_parts_and_complete(settings: Settings) -> None:
    upload_id, _ = _upload_with_part(settings, "pending", expires_in=-1)
    with session_scope(settings) as s:
        with pytest.raises(InvalidRequest) as err:
            asyncio.run(uploads.add_part(s, settings, "personal", upload_id, _one(b"abc")))
        assert (err.value.code, err.value.param) == ("upload_expired", "upload_id")
        assert err.value.message == f"Upload '{upload_id}' is expired: it cannot accept parts"
        row = uploads.get_upload(s, "personal", upload_id)
        assert uploads.to_wire(row).status == "expired"
