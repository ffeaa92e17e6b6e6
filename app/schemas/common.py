"""Shared wire types: OpenAI's list envelope."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    """`{"object": "list", "data": [...], "has_more": ...}` with cursor ids."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class DeletedObject(BaseModel):
    id: str
    object: str
    deleted: bool = True
