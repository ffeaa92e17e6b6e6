"""Idempotency-Key: a retried POST gets the first response back instead of creating a second object."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ftserve.control.db.tables import IdempotencyKey
from ftserve.core.config import Settings
from ftserve.core.errors import Conflict, InvalidRequest
from ftserve.core.ids import now

MAX_KEY_LENGTH = 256


IN_PROGRESS = 0
# A request under a key normally finishes within seconds: a retry that soon usually gets its result.
RETRY_SOON_SECONDS = 2
# Still unfinished after this long, the first request has probably died with its process.
LIKELY_STUCK_SECONDS = 60


def expired(row: IdempotencyKey, settings: Settings, at: int) -> bool:
    """Past its time to live: a finished key after idempotency_ttl_seconds, an unfinished one sooner."""
    unfinished = row.status_code == IN_PROGRESS
    ttl = settings.idempotency_in_progress_seconds if unfinished else settings.idempotency_ttl_seconds
    return row.created_at + ttl < at


def _lookup(session: Session, settings: Settings, org: str, key: str, path: str) -> IdempotencyKey | None:
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    row = session.get(IdempotencyKey, (org, key))
    if row is not None and expired(row, settings, now()):
        session.delete(row)  # an old key starts afresh
        session.commit()
        return None
    if row is None:
        return None
    if row.path != path:
        raise Conflict(
            f"Idempotency-Key '{key}' was already used for {row.path}",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    if row.status_code == IN_PROGRESS:
        raise in_progress(row, settings, now())
    return row


def in_progress(row: IdempotencyKey, settings: Settings, at: int) -> Conflict:
    """The 409 for a key whose first request has not finished: how long it has run, how long the key may
    stay held, and when to retry (Retry-After)."""
    age = max(0, at - row.created_at)
    release_in = max(1, math.ceil(row.created_at + settings.idempotency_in_progress_seconds - at))
    if age < LIKELY_STUCK_SECONDS:
        retry_after = RETRY_SOON_SECONDS
        message = (
            f"A request with Idempotency-Key '{row.key}' started {age} s ago and is still being processed; "
            f"retry after {retry_after} s to get its result. If it never finishes (its process died), "
            f"the key stays held for up to {release_in} s more."
        )
    else:
        retry_after = release_in
        message = (
            f"A request with Idempotency-Key '{row.key}' started {age} s ago and has not finished; its "
            f"process probably died. The key stays held for {release_in} s more (keys of unfinished requests "
            f"are released {settings.idempotency_in_progress_seconds:.0f} s after first use): retry after "
            f"that, or send the request with a new key."
        )
    return Conflict(message, param="Idempotency-Key", code="idempotency_key_in_progress", retry_after=retry_after)


def begin(session: Session, settings: Settings, org: str, key: str | None, path: str) -> dict[str, Any] | None:
    """The stored result for a repeated key, else reserve the key (None) so the request can run.

    The key is reserved before the work starts: a retry that arrives while the first request still
    runs gets a 409 to retry later, and one that arrives after it gets the first result.
    """
    if not key:
        return None
    row = _lookup(session, settings, org, key, path)
    if row is not None:
        return dict(json.loads(row.body))
    session.add(IdempotencyKey(org_id=org, key=key, path=path, status_code=IN_PROGRESS, body="", created_at=now()))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        row = _lookup(session, settings, org, key, path)
        assert row is not None
        return dict(json.loads(row.body))
    return None


@dataclass
class Once:
    """One request under an Idempotency-Key: `stored` is the earlier result to replay, else set `result`."""

    stored: dict[str, Any] | None = None
    result: BaseModel | None = None


@contextmanager
def once(session: Session, settings: Settings, org: str, key: str | None, path: str) -> Iterator[Once]:
    """begin → the caller's work → finish, or abandon if the work raised; no key: just the work."""
    slot = Once(stored=begin(session, settings, org, key, path))
    if slot.stored is not None:
        yield slot
        return
    try:
        yield slot
    except BaseException:
        abandon(session, org, key)
        raise
    if slot.result is not None:
        finish(session, org, key, slot.result)


def finish(session: Session, org: str, key: str | None, result: BaseModel) -> None:
    """Store the response for the reserved key."""
    if not key:
        return
    row = session.get(IdempotencyKey, (org, key))
    if row is not None:
        row.status_code, row.body = 200, result.model_dump_json()
        session.commit()


def abandon(session: Session, org: str, key: str | None) -> None:
    """Release the key after a failed request, so the client may fix its input and retry with it."""
    if not key:
        return
    session.rollback()
    row = session.get(IdempotencyKey, (org, key))
    if row is not None and row.status_code == IN_PROGRESS:
        session.delete(row)
        session.commit()


def purge_expired(session: Session, settings: Settings, at: int) -> int:
    """Delete keys past their time to live; the number deleted."""
    oldest = at - min(settings.idempotency_ttl_seconds, settings.idempotency_in_progress_seconds)
    rows = session.scalars(select(IdempotencyKey).where(IdempotencyKey.created_at < oldest))
    gone = [r for r in rows if expired(r, settings, at)]
    for row in gone:
        session.delete(row)
    session.commit()
    return len(gone)
