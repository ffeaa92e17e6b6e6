"""Stream a JSONL file line by line (bounded memory) and validate or yield its examples."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ftserve.core.datasets.formats import DatasetError, Example, Format, parse_example


@dataclass(frozen=True)
class DatasetSummary:
    format: Format
    n_examples: int


def _no_constants(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON (and every other client's parser) does not.
    raise ValueError(f"{name} is not valid JSON")


# A \uXXXX escape in the surrogate range; json.loads turns a lone one into a str that is not valid Unicode.
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


def iter_examples(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Format, Example]]:
    """Yield (line number, format, example) for each non-blank line; raise DatasetError on the first bad one."""
    fmt: Format | None = None
    with path.open("rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                return
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
                obj = json.loads(text, parse_constant=_no_constants)
            except (json.JSONDecodeError, RecursionError, ValueError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "nesting too deep"
                raise DatasetError("invalid_json", f"invalid JSON: {msg}", lineno) from None
            # Only an escape can smuggle one in (the UTF-8 decode above refuses raw surrogates): check then.
            if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(obj):
                raise DatasetError(
                    "invalid_encoding",
                    "a string contains a lone surrogate escape (e.g. \\ud800), which is not valid Unicode text",
                    lineno,
                )
            line_fmt, example = parse_example(obj, lineno)
            if fmt is None:
                fmt = line_fmt
            elif line_fmt != fmt:
                raise DatasetError("mixed_formats", f"this line is {line_fmt} but the file started as {fmt}", lineno)
            yield lineno, line_fmt, example


def validate_file(path: Path, max_line_bytes: int, min_examples: int) -> DatasetSummary:
    """Check every line of a training file; return its format and example count, or raise DatasetError."""
    fmt: Format | None = None
    count = 0
    last_line = 0
    for lineno, line_fmt, _example in iter_examples(path, max_line_bytes):
        fmt = line_fmt
        count += 1
        last_line = lineno
    if fmt is None:
        raise DatasetError("empty_file", "the file has no examples", 1)
    if count < min_examples:
        raise DatasetError(
            "too_few_examples",
            f"the file has {count} examples; at least {min_examples} are required",
            last_line,
        )
    return DatasetSummary(format=fmt, n_examples=count)
