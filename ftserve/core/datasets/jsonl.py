"""The one JSONL reader, for every file purpose (training, preference, batch): each non-blank line's decoded JSON
value with its number, read line by line in bounded memory, with the size, encoding, NUL, JSON-constant and
lone-surrogate checks, each a DatasetError naming its code and line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftserve.core.datasets.formats import DatasetError


def _no_constants(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON (and every other client's parser) does not.
    raise ValueError(f"{name} is not valid JSON")


# A \\uXXXX escape in the surrogate range; json.loads turns a lone one into a str that is not valid Unicode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate(value: object) -> bool:
    """True if some string in the parsed JSON value cannot be encoded as UTF-8 (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


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
            # Only an escape can smuggle one in (the UTF-8 decode above refuses raw surrogates): check then.
            if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(value):
                raise DatasetError(
                    "invalid_encoding",
                    "a string contains a lone surrogate escape (e.g. \\ud800), which is not valid Unicode text",
                    lineno,
                )
            yield lineno, value
