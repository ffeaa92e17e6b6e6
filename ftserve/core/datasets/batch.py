"""Batch input files (OpenAI's request-line format), validated line by line as training files are:
`{"custom_id", "method": "POST", "url": one of core/endpoints' BATCH_ENDPOINTS, "body": {...}}`,
each body valid for its endpoint, custom ids unique, one endpoint per file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ftserve.core.datasets.formats import DatasetError
from ftserve.core.datasets.jsonl import json_lines
from ftserve.core.endpoints import BATCH_ENDPOINTS as ENDPOINTS
from ftserve.core.validation import explain

_KEYS = {"custom_id", "method", "url", "body"}


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch: its line number, the caller's id for it, its endpoint and its JSON body."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(frozen=True)
class BatchSummary:
    url: str
    n_requests: int


def _body_error(exc: ValidationError, schema: dict[str, Any], body: Any) -> str:
    """The first problem of a request body, in the api's words (core/validation), its field named under `body`."""
    errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
    root = {"type": "object", "properties": {"body": schema}}
    return explain(errors, root, document=schema, body={"body": body}, sources=()).message


def parse_line(lineno: int, obj: Any) -> BatchLine:
    """One decoded line as a request; DatasetError naming what is wrong."""
    if not isinstance(obj, dict):
        raise DatasetError("invalid_request_line", "each line must be a JSON object", lineno)
    for key in ("custom_id", "method", "url", "body"):
        if key not in obj:
            raise DatasetError("missing_key", f"missing '{key}'", lineno)
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise DatasetError("invalid_request_line", f"unknown keys {unknown}; a line has {sorted(_KEYS)}", lineno)
    custom_id, method, url, body = obj["custom_id"], obj["method"], obj["url"], obj["body"]
    if not isinstance(custom_id, str) or not custom_id:
        raise DatasetError("invalid_type", "'custom_id' must be a non-empty string", lineno)
    if method != "POST":
        raise DatasetError("invalid_method", f"'method' must be POST, got {method!r}", lineno)
    if url not in ENDPOINTS:
        raise DatasetError("invalid_url", f"'url' must be one of {sorted(ENDPOINTS)}, got {url!r}", lineno)
    if not isinstance(body, dict):
        raise DatasetError("invalid_type", "'body' must be a JSON object", lineno)
    try:
        request = ENDPOINTS[url].request.model_validate(body)
    except ValidationError as exc:
        schema = ENDPOINTS[url].request.model_json_schema()
        raise DatasetError("invalid_body", _body_error(exc, schema, body), lineno) from None
    if getattr(request, "stream", False):
        raise DatasetError("invalid_body", "body.stream: requests in a batch cannot be streamed", lineno)
    return BatchLine(lineno, custom_id, url, body)


def iter_batch_lines(path: Path, max_line_bytes: int) -> Iterator[BatchLine]:
    """Every request of a batch file, in order; DatasetError (code + line) on the first bad line."""
    for lineno, obj in json_lines(path, max_line_bytes):
        yield parse_line(lineno, obj)


def validate_batch_file(path: Path, max_line_bytes: int, max_requests: int) -> BatchSummary:
    """Check every line of a batch input file; its endpoint and request count, or DatasetError."""
    seen: set[str] = set()
    url: str | None = None
    for req in iter_batch_lines(path, max_line_bytes):
        if req.custom_id in seen:
            raise DatasetError("duplicate_custom_id", f"custom_id {req.custom_id!r} is used twice", req.line)
        seen.add(req.custom_id)
        if url is not None and req.url != url:
            raise DatasetError("mixed_urls", f"this line is for {req.url} but the file started with {url}", req.line)
        url = req.url
        if len(seen) > max_requests:
            raise DatasetError("too_many_requests", f"a batch holds at most {max_requests} requests", req.line)
    if url is None:
        raise DatasetError("empty_file", "the file has no requests", 1)
    return BatchSummary(url, len(seen))
