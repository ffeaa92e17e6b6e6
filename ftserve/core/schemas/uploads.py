"""The Uploads API as OpenAI defines it: create and complete parameters, the Upload and its Parts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from ftserve.core.schemas.common import WireRequest
from ftserve.core.schemas.files import UPLOAD_PURPOSES, FileObject

UploadStatus = Literal["pending", "completed", "cancelled", "expired"]
# The files ftserve takes are JSONL (training data, batch requests); these are the types clients send for it
# (parameters such as "; charset=utf-8" are allowed).
JSONL_MIME_TYPES = (
    "text/jsonl",
    "application/jsonl",
    "application/x-jsonlines",
    "application/jsonlines",
    "application/x-ndjson",
    "application/json",
    "text/plain",
    "application/octet-stream",
)
# Ids are ~31 characters; a part list is bounded by the upload's size cap over the smallest sensible part.
PartId = Annotated[str, Field(min_length=1, max_length=64)]


class ExpiresAfter(WireRequest):
    """OpenAI's expiration policy for the File the upload becomes (anchor created_at, 1 hour to 30 days)."""

    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=3600, le=2_592_000)]


class UploadCreate(WireRequest):
    """POST /v1/uploads: the file to come, in parts."""

    bytes: Annotated[int, Field(ge=1, description="The number of bytes in the file you are uploading")]
    filename: Annotated[str, Field(min_length=1, max_length=512)]
    # Both documented as enums; anything else is a 400 naming what ftserve accepts.
    mime_type: Annotated[str, Field(min_length=1, max_length=255, json_schema_extra={"enum": list(JSONL_MIME_TYPES)})]
    purpose: Annotated[str, Field(json_schema_extra={"enum": list(UPLOAD_PURPOSES)})]
    # Accepted for compatibility; ftserve keeps files until they are deleted (docs/api.md).
    expires_after: ExpiresAfter | None = None


class UploadComplete(WireRequest):
    """POST /v1/uploads/{id}/complete: the parts, in order."""

    part_ids: Annotated[list[PartId], Field(max_length=10_000, description="The ordered list of Part IDs")]
    md5: Annotated[str | None, Field(default=None, max_length=64)] = None


class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: UploadStatus
    file: FileObject | None = None


class UploadPartObject(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str
