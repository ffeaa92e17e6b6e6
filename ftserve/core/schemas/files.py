"""Files: OpenAI's FileObject."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

FilePurpose = Literal["fine-tune", "fine-tune-results"]
# What a client may upload a file for (the files it then gets are JSONL, validated by their purpose).
UPLOAD_PURPOSES = ("fine-tune", "batch", "evals")


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None
    # --- ftserve extensions: for status=error, {"error_code", "error_line"} of the first bad line ---
    extensions: dict[str, Any] | None = None
