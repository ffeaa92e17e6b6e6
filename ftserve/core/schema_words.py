"""Schemas in words: what a JSON schema takes, said to a user (`"auto" or an integer from 1 to 50`, `a non-empty
array of strings`), and a received value quoted back as JSON. core/validation's errors are worded here."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Schema = Mapping[str, Any]
# The most of a received value an error quotes back.
RECEIVED_CHARS = 100


class Resolver:
    """Follows a schema's $refs within one document (a model's JSON schema, an OpenAPI document)."""

    def __init__(self, document: Schema) -> None:
        self.document = document

    def __call__(self, node: Schema | None) -> Schema | None:
        """node with its $ref followed (within the document: `#/$defs/X`, `#/components/schemas/X`)."""
        seen = 0
        while node is not None and "$ref" in node and seen < 32:
            target: Any = self.document
            for part in str(node["$ref"]).lstrip("#/").split("/"):
                target = target.get(part) if isinstance(target, Mapping) else None
            node, seen = target, seen + 1
        return node


def union_branches(node: Schema) -> list[Schema] | None:
    """A union's branches, null left out; None if node is no union."""
    choices = [c for c in (node.get("anyOf") or node.get("oneOf") or ()) if c.get("type") != "null"]
    return choices or None


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


def _bounds(node: Schema) -> str:
    lo, lo_x = node.get("minimum"), node.get("exclusiveMinimum")
    hi, hi_x = node.get("maximum"), node.get("exclusiveMaximum")
    if lo is not None and hi is not None:
        return f" from {_num(lo)} to {_num(hi)}"
    low = f"greater than {_num(lo_x)}" if lo_x is not None else f"of at least {_num(lo)}" if lo is not None else ""
    high = f"less than {_num(hi_x)}" if hi_x is not None else f"at most {_num(hi)}" if hi is not None else ""
    if low and high:
        return f" {low} and {high}"
    if high and hi is not None:
        return f" of {high}"
    return f" {low or high}" if low or high else ""


def _join_or(words: Sequence[str]) -> str:
    words = list(dict.fromkeys(words))
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _count(node: Schema, low: str, high: str, unit: str) -> str:
    lo, hi = node.get(low), node.get(high)
    if lo is not None and hi is not None:
        return f" of {lo} to {hi} {unit}"
    if hi is not None:
        return f" of at most {hi} {unit}"
    if lo is not None and lo > 1:
        return f" of at least {lo} {unit}"
    return ""


def describe(node: Schema | None, resolve: Callable[[Schema | None], Schema | None], finite: bool = False) -> str:
    """What a schema takes, in words: `"auto" or an integer from 1 to 50`, `one of "text", "json_object"`."""
    return _describe(node, resolve, finite, plural=False)


def _describe(
    node: Schema | None, resolve: Callable[[Schema | None], Schema | None], finite: bool, plural: bool
) -> str:
    node = resolve(node)
    if node is None:
        return "values" if plural else "a valid value"
    branches = union_branches(node)
    if branches is not None:
        return _join_or([_describe(b, resolve, finite, plural) for b in branches] or ["null"])
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        values = [json.dumps(v) for v in node["enum"]]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    kind = node.get("type")
    if kind == "integer":
        return ("integers" if plural else "an integer") + _bounds(node)
    if kind == "number":
        noun = "finite number" if finite else "number"
        return (f"{noun}s" if plural else f"a {noun}") + _bounds(node)
    if kind == "string":
        empty = node.get("minLength") == 1
        text = (
            ("non-empty strings" if plural else "a non-empty string")
            if empty
            else ("strings" if plural else "a string")
        )
        text += _count(node, "minLength" if not empty else "", "maxLength", "characters")
        return text + (f" matching {node['pattern']}" if "pattern" in node else "")
    if kind == "boolean":
        return "booleans" if plural else "a boolean (true or false)"
    if kind == "array":
        items = _describe(node.get("items"), resolve, finite, plural=True)
        empty = node.get("minItems") == 1
        head = ("non-empty arrays" if empty else "arrays") if plural else ("a non-empty array" if empty else "an array")
        lo, hi = node.get("minItems"), node.get("maxItems")
        size = f" ({lo} to {hi} items)" if lo and hi and not empty else f" (at most {hi} items)" if hi else ""
        size = size or (f" (at least {lo} items)" if lo and lo > 1 else "")
        return f"{head} of {items}{size}"
    if kind == "null":
        return "null"
    return "objects" if plural else "an object"


def received(value: Any) -> str:
    """A received value as the user wrote it (JSON), cut to RECEIVED_CHARS."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= RECEIVED_CHARS else f"{text[:RECEIVED_CHARS]}… ({len(text)} characters)"
