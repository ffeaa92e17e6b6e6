"""Serving's ResponseStore port on the DB: the Responses API's stored responses, per org, each call in a session
of its own (written after the response body is built, never while tokens are generated); an unreachable DB is
the domain's Unavailable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

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

    def save(self, org: str, response: SavedResponse) -> None:
        row = StoredResponse(
            id=response.id,
            org_id=org,
            created_at=response.created_at,
            body=response.body,
            input_items=response.input_items,
            history=response.history,
        )
        self._run(lambda s: s.add(row))

    def get(self, org: str, response_id: str) -> SavedResponse:
        def read(s: Session) -> SavedResponse:
            row = _row(s, org, response_id)
            return SavedResponse(row.id, row.created_at, row.body, row.input_items, row.history)

        return self._run(read)

    def delete(self, org: str, response_id: str) -> None:
        self._run(lambda s: s.delete(_row(s, org, response_id)))

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


def _row(session: Session, org: str, response_id: str) -> StoredResponse:
    row = session.get(StoredResponse, response_id)
    if row is None or row.org_id != org:
        raise not_found("response", response_id)
    return row
