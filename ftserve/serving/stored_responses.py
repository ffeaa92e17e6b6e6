"""The Responses API's state through serving's ResponseStore port, for the HTTP route and the batch runner alike:
the conversation a previous_response_id continues (read before the rows are planned), and a finished response
kept when its request says `store` (written once its body is built, never while its tokens are generated)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ftserve.core.errors import NotFound, not_found
from ftserve.serving.ports import ResponseStore, SavedResponse
from ftserve.serving.responses import ResponsePlan


def history(store: ResponseStore, org: str, previous: str | None) -> list[dict[str, Any]]:
    """The conversation a previous_response_id continues: its history, its input items, then its output; a
    missing, expired or another org's id is a 404 naming previous_response_id."""
    if previous is None:
        return []
    try:
        saved = store.get(org, previous)
    except NotFound:
        raise not_found("response", previous, param="previous_response_id") from None
    return saved.history + saved.input_items + list(saved.body.get("output", []))


def save(store: ResponseStore, org: str, plan: ResponsePlan, response: BaseModel) -> None:
    """Keep the finished response (its body, input items and history) when the request asked to store it."""
    if plan.req.store:
        body = response.model_dump(mode="json")
        store.save(org, SavedResponse(body["id"], body["created_at"], body, plan.input_items, plan.history))
