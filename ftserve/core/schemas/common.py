"""Shared wire types: OpenAI's list envelope and metadata."""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

T = TypeVar("T")
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


def _metadata_limits(value: dict[str, str]) -> dict[str, str]:
    """OpenAI's limits on `metadata`: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if len(value) > METADATA_PAIRS:
        raise ValueError(f"must have at most {METADATA_PAIRS} key-value pairs; got {len(value)}")
    for key, item in value.items():
        if len(key) > METADATA_KEY_CHARS:
            raise ValueError(f"keys must be at most {METADATA_KEY_CHARS} characters; got {key[:16]!r}… ({len(key)})")
        if len(item) > METADATA_VALUE_CHARS:
            raise ValueError(
                f"values must be at most {METADATA_VALUE_CHARS} characters; the value of {key!r} has {len(item)}"
            )
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_metadata_limits)]


class WireRequest(BaseModel):
    """What every request model shares: a field the model does not have is refused (its subclasses say where a
    moved one went, in `x-moved`: core/validation), and JSON types are taken as sent, as OpenAI takes them: no
    "3" or true for 3, no "0.5" for 0.5 (an integer is a number), and no NaN or Infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


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
