"""Shared wire types: OpenAI's list envelope and metadata."""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel

T = TypeVar("T")
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


def _metadata_limits(value: dict[str, str]) -> dict[str, str]:
    """OpenAI's limits on `metadata`: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if len(value) > METADATA_PAIRS:
        raise ValueError(f"at most {METADATA_PAIRS} key-value pairs are allowed, got {len(value)}")
    for key, item in value.items():
        if len(key) > METADATA_KEY_CHARS:
            raise ValueError(f"keys are at most {METADATA_KEY_CHARS} characters; {key[:16]!r}… has {len(key)}")
        if len(item) > METADATA_VALUE_CHARS:
            raise ValueError(
                f"values are at most {METADATA_VALUE_CHARS} characters; the value of {key!r} has {len(item)}"
            )
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_metadata_limits)]


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
