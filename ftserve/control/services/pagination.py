"""Cursor pagination over (created_at, id), the way OpenAI's `after`/`limit` lists work."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from ftserve.core.errors import bad_request, quote


def page(
    session: Session,
    stmt: Select[Any],
    model: Any,
    *,
    after: str | None,
    limit: int,
    descending: bool = True,
) -> tuple[list[Any], bool]:
    """One page of `stmt` after the object with id `after` (empty: from the start); returns (rows, has_more)."""
    if after:
        anchor = session.execute(select(model.created_at, model.id).where(model.id == after)).first()
        if anchor is None:
            raise bad_request(f"No object with id {quote(after)} to page after", param="after", code="invalid_cursor")
        ts, ident = anchor
        if descending:
            cond = or_(model.created_at < ts, and_(model.created_at == ts, model.id < ident))
        else:
            cond = or_(model.created_at > ts, and_(model.created_at == ts, model.id > ident))
        stmt = stmt.where(cond)
    order = (model.created_at.desc(), model.id.desc()) if descending else (model.created_at, model.id)
    rows = list(session.scalars(stmt.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
