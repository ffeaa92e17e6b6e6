"""A training file's examples, line by line through the one JSONL reader (datasets/jsonl), and its validation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftserve.core.datasets.formats import (
    KNOWN_KEYS,
    PREFERENCE_INPUT_KEYS,
    DatasetError,
    Example,
    Format,
    parse_example,
)
from ftserve.core.datasets.jsonl import json_lines

# How much of the unknown keys a file's status_details names (a generated file may carry thousands).
_MAX_KEYS_NAMED = 10
_MAX_KEY_CHARS = 64


@dataclass
class KeySeen:
    """An unknown key: the first line it is on and how many lines carry it."""

    first_line: int
    lines: int = 1


@dataclass
class UnknownKeys:
    """Keys a line carries that its format does not read (`weight_decay`, a typo such as `mesages`): ignored,
    as OpenAI ignores them, but counted, so the file's status_details names them rather than dropping them
    without a word. A preference line's `input` is looked into too (`input.<key>`)."""

    keys: dict[str, KeySeen] = field(default_factory=dict)

    def add(self, fmt: Format, obj: dict[str, Any], line: int) -> None:
        if fmt == "prompts":
            return  # a reinforcement line's other keys are its grader's references (item.*), not unknown
        unknown = [str(k) for k in obj if k not in KNOWN_KEYS[fmt]]
        if fmt == "preference" and isinstance(obj.get("input"), dict):
            unknown += [f"input.{k}" for k in obj["input"] if k not in PREFERENCE_INPUT_KEYS]
        for key in unknown:
            seen = self.keys.get(key)
            if seen is None:
                self.keys[key] = KeySeen(line)
            else:
                seen.lines += 1

    def warning(self, fmt: Format) -> str | None:
        """One sentence naming each unknown key (by first appearance), its first line and its line count."""
        if not self.keys:
            return None
        named = []
        for key, seen in list(self.keys.items())[:_MAX_KEYS_NAMED]:
            shown = key if len(key) <= _MAX_KEY_CHARS else key[:_MAX_KEY_CHARS] + "…"
            lines = "1 line" if seen.lines == 1 else f"{seen.lines} lines"
            named.append(f"{json.dumps(shown, ensure_ascii=False)} (first on line {seen.first_line}, {lines})")
        more = len(self.keys) - len(named)
        tail = f" and {more} more" if more > 0 else ""
        known = ", ".join(sorted(KNOWN_KEYS[fmt]))
        return (
            f"warning: unknown keys ignored: {'; '.join(named)}{tail}. {fmt} lines are read for: {known}; "
            "other keys are not trained on"
        )


@dataclass(frozen=True)
class DatasetSummary:
    format: Format
    n_examples: int
    # status_details of a file that is valid but carries keys its format does not read; None when it has none.
    warning: str | None = None


def iter_examples(
    path: Path, max_line_bytes: int, unknown: UnknownKeys | None = None
) -> Iterator[tuple[int, Format, Example]]:
    """Yield (line number, format, example) for each non-blank line; raise DatasetError on the first bad one.
    `unknown`, when given, counts the keys each line carries that its format does not read."""
    fmt: Format | None = None
    for lineno, obj in json_lines(path, max_line_bytes):
        line_fmt, example = parse_example(obj, lineno, fmt)
        if fmt is None:
            fmt = line_fmt
        elif line_fmt != fmt:
            raise DatasetError("mixed_formats", f"this line is {line_fmt} but the file started as {fmt}", lineno)
        if unknown is not None:
            unknown.add(line_fmt, obj, lineno)
        yield lineno, line_fmt, example


def validate_file(path: Path, max_line_bytes: int, min_examples: int) -> DatasetSummary:
    """Check every line of a training file; return its format, example count and a warning naming the keys
    its lines carry that the format does not read (None if none), or raise DatasetError."""
    fmt: Format | None = None
    count = 0
    last_line = 0
    unknown = UnknownKeys()
    for lineno, line_fmt, _example in iter_examples(path, max_line_bytes, unknown):
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
    return DatasetSummary(format=fmt, n_examples=count, warning=unknown.warning(fmt))
