"""The Batch API as OpenAI defines it: create parameters, the batch object and its request counts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ftserve.core.schemas.common import Metadata, WireRequest

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


class BatchCreate(WireRequest):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None
    # Accepted for compatibility; ftserve keeps output files until they are deleted (docs/api.md).
    output_expires_after: dict[str, Any] | None = None


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None = None
