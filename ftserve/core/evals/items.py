"""An eval run's items: each `{"item": {...}, "sample": {...}?}` of a purpose=evals JSONL file or of a run's inline
`content`, checked against the eval's `item_schema` (jsonschema) one by one. An item that does not match carries
its error, naming its line, and becomes an errored output item alone; only a file that is not JSONL at all is
refused as a whole (at upload)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from ftserve.core.datasets.formats import DatasetError
from ftserve.core.datasets.jsonl import json_lines


@dataclass(frozen=True)
class EvalItem:
    """One item of a run: its place (`datasource_item_id`, 0-based), where a person finds it ("line 3",
    "content[2]"), the item and sample as given, and why it cannot be graded (None when it can)."""

    index: int
    where: str
    item: dict[str, Any]
    sample: dict[str, Any] | None
    error: str | None = None


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a JSON schema its draft accepts, or cannot check an empty item (an unresolvable
    $ref); None when it is fine."""
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        return exc.message
    try:
        best_match(_validator(schema).iter_errors({}))
    except Exception as exc:  # referencing's Unresolvable and kin: the schema cannot be applied
        return f"it cannot be applied to an item: {exc}"
    return None


def _validator(schema: dict[str, Any]) -> Validator:
    cls = validator_for(schema, default=Draft202012Validator)
    return cls(schema)  # type: ignore[no-any-return]


def _checked(index: int, where: str, row: Any, validator: Validator) -> EvalItem:
    if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
        got = row.get("item") if isinstance(row, dict) else row
        return EvalItem(index, where, {}, None, f"{where}: expected an object with an 'item' object, got {_kind(got)}")
    item, sample = row["item"], row.get("sample")
    if sample is not None and not isinstance(sample, dict):
        return EvalItem(index, where, item, None, f"{where}: 'sample' must be an object, got {_kind(sample)}")
    try:
        error = best_match(validator.iter_errors(item))
    except Exception as exc:  # a $ref this item reaches that does not resolve: this item cannot be checked
        return EvalItem(index, where, item, sample, f"{where}: the eval's item_schema cannot be applied to it: {exc}")
    if error is None:
        return EvalItem(index, where, item, sample)
    at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return EvalItem(
        index, where, item, sample, f"{where}: item{at} does not match the eval's item_schema: {error.message}"
    )


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__.replace("dict", "object").replace("str", "string")


def content_items(content: Iterable[dict[str, Any]], schema: dict[str, Any]) -> list[EvalItem]:
    """A run's inline `content` rows as items, each checked against `schema`."""
    validator = _validator(schema)
    return [_checked(i, f"content[{i}]", row, validator) for i, row in enumerate(content)]


def file_items(path: Path, max_line_bytes: int, schema: dict[str, Any]) -> list[EvalItem]:
    """A purpose=evals file's lines as items, each checked against `schema`; DatasetError if it is not JSONL."""
    validator = _validator(schema)
    return [
        _checked(i, f"line {line}", row, validator) for i, (line, row) in enumerate(json_lines(path, max_line_bytes))
    ]


def count_eval_lines(path: Path, max_line_bytes: int) -> int:
    """An uploaded purpose=evals file's items (every line JSON); DatasetError naming the line if not, or if none."""
    count = sum(1 for _ in json_lines(path, max_line_bytes))
    if count == 0:
        raise DatasetError("empty_file", "the file has no items", 1)
    return count
