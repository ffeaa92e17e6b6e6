"""Serving's ResponseStore port on the DB: the Responses API's stored responses, per org, each call in a session
of its own (written after the response body is built, never while tokens are generated); an unreachable DB is
the domain's Unavailable. A response past FTSERVE_RESPONSES_RETENTION_DAYS reads as deleted at once, and the
orphan sweep deletes its row (purge_expired)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from ftserve.control.db.session import in_session
from ftserve.control.db.tables import StoredResponse
from ftserve.core.config import Settings
from ftserve.core.errors import bad_request, not_found, quote
from ftserve.serving.ports import SavedResponse

T = TypeVar("T")


class SqlResponseStore:
    """Implements serving.ports.ResponseStore."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._writing = threading.Lock()  # one writer at a time...
        self._queued = threading.Lock()
        self._pending: list[tuple[dict[str, Any], Future[None]]] = []  # ...taking every save queued behind it

    def save(self, org: str, response: SavedResponse) -> None:
        """Returns once the row is committed (so the response is retrievable), written in one transaction with
        the saves of other requests that finished meanwhile: a group commit, one fsync for many responses."""
        row = {
            "id": response.id,
            "org_id": org,
            "created_at": response.created_at,
            "body": response.body,
            "input_items": response.input_items,
            "history": response.history,
        }
        done: Future[None] = Future()
        with self._queued:
            self._pending.append((row, done))
        with self._writing:
            if not done.done():  # no writer took it while this thread waited: write all that is queued
                self._write_pending()
        done.result()

    def _write_pending(self) -> None:
        with self._queued:
            group, self._pending = self._pending, []
        try:
            # A Core insert of the rows (no ORM unit of work): the write is all the request pays for storing.
            self._run(lambda s: s.execute(insert(StoredResponse), [row for row, _ in group]))
        except BaseException as exc:  # every save of the group failed with it (an unreachable DB: 503 each)
            for _, done in group:
                done.set_exception(exc)
            return
        for _, done in group:
            done.set_result(None)

    def get(self, org: str, response_id: str) -> SavedResponse:
        def read(s: Session) -> SavedResponse:
            row = self._row(s, org, response_id)
            return SavedResponse(row.id, row.created_at, row.body, row.input_items, row.history)

        return self._run(read)

    def delete(self, org: str, response_id: str) -> None:
        self._run(lambda s: s.delete(self._row(s, org, response_id)))

    def input_items(
        self, org: str, response_id: str, after: str | None, limit: int, order: str
    ) -> tuple[list[dict[str, Any]], bool]:
        items: list[dict[str, Any]] = list(self.get(org, response_id).input_items)
        if order == "desc":
            items.reverse()
        if after:
            at = next((i for i, item in enumerate(items) if item.get("id") == after), None)
            if at is None:
                raise bad_request(f"No input item with id {quote(after)} to page after", param="after")
            items = items[at + 1 :]
        return items[:limit], len(items) > limit

    def _run(self, work: Callable[[Session], T]) -> T:
        return in_session(self.settings, work)

    def _row(self, session: Session, org: str, response_id: str) -> StoredResponse:
        """The org's stored response; another org's, a deleted or an expired one is the same 404."""
        row = session.get(StoredResponse, response_id)
        kept_since = self.settings.responses_kept_since(time.time())
        if row is None or row.org_id != org or (kept_since is not None and row.created_at < kept_since):
            raise not_found("response", response_id)
        return row


PURGE_CHUNK = 1000  # rows per delete: short transactions beside the responses being written


def purge_expired(session: Session, settings: Settings, now: float) -> int:
    """Delete every org's stored responses past the retention at `now`, a chunk per commit; how many went."""
    kept_since = settings.responses_kept_since(now)
    if kept_since is None:
        return 0
    old = StoredResponse.created_at < kept_since
    purged = 0
    while True:
        ids = list(session.scalars(select(StoredResponse.id).where(old).limit(PURGE_CHUNK)))
        if ids:
            session.execute(delete(StoredResponse).where(StoredResponse.id.in_(ids), old))
            session.commit()
            purged += len(ids)
        if len(ids) < PURGE_CHUNK:
            return purged
