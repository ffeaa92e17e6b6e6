"""A training file's examples, line by line through the one JSONL reader (datasets/jsonl), and its validation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ftserve.core.datasets.formats import DatasetError, Example, Format, parse_example
from ftserve.core.datasets.jsonl import json_lines


@dataclass(frozen=True)
class DatasetSummary:
    format: Format
    n_examples: int


def iter_examples(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Format, Example]]:
    """Yield (line number, format, example) for each non-blank line; raise DatasetError on the first bad one."""
    fmt: Format | None = None
    for lineno, obj in json_lines(path, max_line_bytes):
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
