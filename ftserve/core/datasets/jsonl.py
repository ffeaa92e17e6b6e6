"""Read a JSONL file line by line in bounded memory: each non-blank line's decoded JSON value, with its number."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftserve.core.datasets.formats import DatasetError


def _no_constants(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON (and every other client's parser) does not.
    raise ValueError(f"{name} is not valid JSON")


def json_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, value) per non-blank line; DatasetError (code + line) on the first bad one."""
    with path.open("rb") as fh:
        lineno = 0
        while raw := fh.readline(max_line_bytes + 1):
            lineno += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise DatasetError("line_too_long", f"line is longer than {max_line_bytes} bytes", lineno)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DatasetError("invalid_encoding", "line is not valid UTF-8", lineno) from None
            if "\x00" in text:
                raise DatasetError("invalid_encoding", "line contains NUL bytes (binary or UTF-16 data?)", lineno)
            if not text.strip():
                continue
            try:
                value = json.loads(text, parse_constant=_no_constants)
            except (json.JSONDecodeError, RecursionError, ValueError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "nesting too deep"
                raise DatasetError("invalid_json", f"invalid JSON: {msg}", lineno) from None
            yield lineno, value
