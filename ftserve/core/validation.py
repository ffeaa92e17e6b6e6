"""Validation errors in the user's words: pydantic's error list, read against the request's JSON schema, becomes
one InvalidRequest that names the field as the user wrote it (`hyperparameters.n_epochs`, `messages[2].content`),
states what it takes (a union such as "auto" | 1-50 is one sentence naming both) and quotes what was received.

Every request model is read the same way: the api's routes (their OpenAPI schema, control/api/errors.py) and the
request bodies of batch files (the model's own JSON schema). A field that moved is named by its new place: an
object schema lists them under `x-moved` ({old name: new parameter}).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ftserve.core.errors import InvalidRequest
from ftserve.core.schema_words import Resolver, Schema, describe, received, union_branches

# Where a request's values come from: pydantic's loc starts with one of these for FastAPI's parameters; the user
# never wrote them, so a param never shows them.
SOURCES = ("body", "query", "path", "header", "cookie")
# A schema extension: an object's fields that moved, by their old name → the parameter to send instead.
MOVED = "x-moved"
_TYPE_ERRORS = {"int_from_float", "int_parsing", "float_parsing", "bool_parsing", "model_attributes_type"}
# Errors of a value whose type the field takes (a bound, a length, a pattern): that branch of a union is the user's.
_CONSTRAINTS = {
    *("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of", "finite_number"),
    *("string_too_short", "string_too_long", "string_pattern_mismatch", "too_short", "too_long", "value_error"),
}


def moved(fields: Mapping[str, str]) -> dict[str, Any]:
    """A model's `json_schema_extra` naming its fields that moved: {old name: the parameter to send instead}."""
    return {MOVED: dict(fields)}


@dataclass(frozen=True)
class _Step:
    """One element of an error's loc: a field or index the user wrote, or the tag pydantic gives a union's branch."""

    key: str | int
    tag: bool  # a union branch's tag: not a part of the param
    node: Schema | None  # the schema at this step (for a tag: the union itself)
    parent: Schema | None  # the object schema holding a field (for unknown and moved fields)


def _label(node: Schema | None, resolve: Resolver) -> str:
    """The tag pydantic gives a union branch of this schema (its core schema's short name), as best as the JSON
    schema tells it: `str`, `constrained-int`, `list[str]`, `literal['auto']`, a model's name."""
    if node is None:
        return ""
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1]
    node = resolve(node) or {}
    if "const" in node or "enum" in node:
        values = [node["const"]] if "const" in node else list(node["enum"])
        return "literal[" + ",".join(repr(v) for v in values) + "]"
    kind = node.get("type")
    bounded = any(k in node for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))
    sized = any(k in node for k in ("minLength", "maxLength", "pattern"))
    if kind in ("integer", "number", "string"):
        name = {"integer": "int", "number": "float", "string": "str"}[kind]
        return f"constrained-{name}" if bounded or sized else name
    if kind == "boolean":
        return "bool"
    if kind == "array":
        return f"list[{_label(node.get('items'), resolve) or 'any'}]"
    if kind == "object" and "properties" not in node:
        extra = node.get("additionalProperties")
        return f"dict[str,{_label(extra, resolve) if isinstance(extra, Mapping) else 'any'}]"
    return str(node.get("title", ""))


def _walk(root: Schema | None, loc: Sequence[str | int], resolve: Resolver, strict: bool = False) -> list[_Step] | None:
    """loc as steps through the schema; None when `strict` and loc leaves the schema before its last element."""
    steps: list[_Step] = []
    node, parent = resolve(root), None
    i = 0
    while i < len(loc):
        key = loc[i]
        branches = union_branches(node) if node is not None else None
        if branches is not None and len(branches) == 1:
            node = resolve(branches[0])
            continue
        if branches is not None:
            rest = loc[i + 1 :]
            steps.append(_Step(key, True, node, parent))
            if rest:
                node = _branch(branches, key, rest, resolve)
            i += 1
            continue
        here = node
        if here is not None and here.get("type") == "array" and isinstance(key, int):
            node, parent = resolve(here.get("items")), None
        elif here is not None and isinstance(key, str) and key in (here.get("properties") or {}):
            node, parent = resolve(here["properties"][key]), here
        elif here is not None and isinstance(key, str) and isinstance(here.get("additionalProperties"), Mapping):
            node, parent = resolve(here["additionalProperties"]), None
        else:
            if strict and i < len(loc) - 1:
                return None
            node, parent = None, here
        steps.append(_Step(key, False, node, parent))
        i += 1
    return steps


def _unwrap(node: Schema | None, resolve: Resolver) -> Schema | None:
    """A nullable field's schema without its null."""
    branches = union_branches(node) if node is not None else None
    return resolve(branches[0]) if branches is not None and len(branches) == 1 else node


def _branch(branches: list[Schema], tag: str | int, rest: Sequence[str | int], resolve: Resolver) -> Schema | None:
    """The branch a union's tag names, where the rest of the loc leads on."""
    walks = [(b, _walk(b, rest, resolve, strict=True)) for b in branches]
    walkable = [b for b, steps in walks if steps is not None]
    named = [b for b in walkable if _label(b, resolve) == tag]
    # A tag that names no branch (a callable discriminator's, such as an item's `type`): a branch that knows every
    # field of the rest (one holding `output`, not merely `call_id`) before one where the last field is unknown.
    known = [b for b, steps in walks if steps is not None and (not steps or steps[-1].node is not None)]
    chosen = (named or known or walkable)[:1]
    return resolve(chosen[0]) if chosen else None


def _param(steps: Sequence[_Step], sources: Sequence[str]) -> str | None:
    """The field as the user wrote it: dotted names, list indices in brackets."""
    out = ""
    for n, step in enumerate(steps):
        if step.tag or (n == 0 and step.key in sources):
            continue
        out += f"[{step.key}]" if isinstance(step.key, int) else (f".{step.key}" if out else str(step.key))
    return out or None


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _at(body: Any, steps: Sequence[_Step], sources: Sequence[str]) -> tuple[bool, Any]:
    """(found, the value) the user sent at these steps (tags skipped)."""
    value = body
    for n, step in enumerate(steps):
        if step.tag or (n == 0 and step.key in sources):
            continue
        in_object = isinstance(value, Mapping) and step.key in value
        if in_object or (isinstance(value, list) and isinstance(step.key, int) and 0 <= step.key < len(value)):
            value = value[step.key]
        else:
            return False, None
    return True, value


# -- choosing the one error to report ---------------------------------------------------------------------------
def _choose(
    errors: Sequence[Mapping[str, Any]], root: Schema | None, resolve: Resolver
) -> tuple[Mapping[str, Any], list[_Step]]:
    """The error to report and its steps into the request. A union's branches each report an error; when exactly
    one branch got past the value's type (its errors lie deeper) and no other took the value's type, that branch's
    error is the user's; otherwise the union is reported as one field, naming every branch."""
    pool = list(errors)
    settled = 0  # steps of the first error already decided on
    while True:
        first = pool[0]
        loc = tuple(first.get("loc", ()))
        steps = _walk(root, loc, resolve) or []
        for n in range(settled, len(steps)):
            if not steps[n].tag:
                continue
            prefix = loc[:n]
            inside = [e for e in pool if tuple(e.get("loc", ()))[:n] == prefix and len(e.get("loc", ())) > n]
            deep = {e["loc"][n] for e in inside if len(e["loc"]) > n + 1}
            took_type = any(len(e["loc"]) == n + 1 and e.get("type") in _CONSTRAINTS for e in inside)
            if len(deep) == 1 and not took_type:
                tag = deep.pop()
                pool = [e for e in inside if e["loc"][n] == tag and len(e["loc"]) > n + 1]
                settled = n + 1
                break
            return {**first, "loc": prefix, "type": "union"}, steps[:n]
        else:
            return first, steps


# -- the one translation ----------------------------------------------------------------------------------------
def explain(
    errors: Sequence[Mapping[str, Any]],
    schema: Schema | None,
    *,
    document: Schema | None = None,
    body: Any = None,
    sources: Sequence[str] = SOURCES,
) -> InvalidRequest:
    """pydantic's errors (ValidationError.errors(), FastAPI's RequestValidationError.errors()) against the
    request's schema (refs resolved in `document`, by default the schema itself) as one 400 naming the field."""
    if not errors:
        return InvalidRequest("The request is not valid.", param=None)
    resolve = Resolver(document if document is not None else (schema or {}))
    first = errors[0]
    if first.get("type") == "json_invalid":
        return _json_invalid(first)
    error, steps = _choose(errors, schema, resolve)
    param = _param(steps, sources)
    kind = str(error.get("type", ""))
    last = steps[-1] if steps else None
    node = _unwrap(last.node if last is not None else resolve(schema), resolve)
    if kind == "union":
        value_found, value = _union_input(errors, tuple(error["loc"]), body, steps, sources)
    else:
        value_found, value = "input" in error, error.get("input")
    got = f"; got {received(value)}" if value_found else ""
    if kind == "missing":
        if param is None or (len(steps) == 1 and steps[0].key in sources):
            return InvalidRequest(
                "The request body is missing; this endpoint takes a JSON object.", code="missing_required_parameter"
            )
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return _unknown(param, last)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _tag(param, node, error, resolve)
    if kind in ("value_error", "assertion_error"):
        return InvalidRequest(_own_words(param, str(error.get("msg", ""))), param=param, code="invalid_value")
    if param is None:  # the body itself: a JSON array, a string, a number
        return InvalidRequest(f"The request body must be a JSON object{got}.", param=None, code="invalid_type")
    if node is None:
        message = f"{param}: {error.get('msg', 'is not valid')}{got}"
        return InvalidRequest(message, param=param, code="invalid_value")
    finite = kind == "finite_number" or _not_finite(value)
    text = describe(node, resolve, finite=finite)
    code = "invalid_type" if _wrong_type(kind, value_found, value, node, resolve) else "invalid_value"
    return InvalidRequest(f"{param} must be {text}{got}.", param=param, code=code)


def _union_input(
    errors: Sequence[Mapping[str, Any]],
    prefix: tuple[Any, ...],
    body: Any,
    steps: Sequence[_Step],
    sources: Sequence[str],
) -> tuple[bool, Any]:
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if loc[: len(prefix)] == prefix and len(loc) == len(prefix) + 1 and "input" in e:
            return True, e["input"]
    return _at(body, steps, sources) if body is not None else (False, None)


def _json_invalid(error: Mapping[str, Any]) -> InvalidRequest:
    loc = tuple(error.get("loc", ()))
    where = next((p for p in reversed(loc) if isinstance(p, int)), None)
    why = (error.get("ctx") or {}).get("error")
    detail = f": {why}" if why else ""
    at = f" at position {where}" if where is not None else ""
    return InvalidRequest(
        f"The request body is not valid JSON{detail}{at}. Send a JSON object with Content-Type: application/json.",
        param=None,
        code="invalid_json",
    )


def _unknown(param: str | None, last: _Step | None) -> InvalidRequest:
    parent = last.parent if last is not None else None
    name = str(last.key) if last is not None else ""
    moved = (parent or {}).get(MOVED) or {}
    if name in moved:
        return InvalidRequest(
            f"Unknown parameter: '{param}'. It has moved: send it as '{moved[name]}'.",
            param=param,
            code="moved_parameter",
        )
    fields = sorted((parent or {}).get("properties") or {})
    takes = f" Known parameters here: {', '.join(fields)}." if fields else ""
    return InvalidRequest(f"Unknown parameter: '{param}'.{takes}", param=param, code="unknown_parameter")


def _tag(param: str | None, node: Schema | None, error: Mapping[str, Any], resolve: Resolver) -> InvalidRequest:
    union = node or {}
    field = str((union.get("discriminator") or {}).get("propertyName") or "type")
    where = f"{param}.{field}" if param else field
    if error.get("type") == "union_tag_not_found":
        return InvalidRequest(f"Missing required parameter: '{where}'.", param=where, code="missing_required_parameter")
    tags = list((union.get("discriminator") or {}).get("mapping") or {})
    ctx = error.get("ctx") or {}
    # A callable discriminator has no mapping in the schema: its tags come quoted in pydantic's words ('a', 'b').
    tags = tags or re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
    allowed = ", ".join(json.dumps(t) for t in tags)
    sent = error.get("input")
    # The value as sent (a callable discriminator's tag is its string: 5 would read "5").
    got = received(sent[field] if isinstance(sent, Mapping) and field in sent else ctx.get("tag"))
    return InvalidRequest(f"{where} must be one of {allowed}; got {got}.", param=where, code="invalid_value")


def _own_words(param: str | None, message: str) -> str:
    """A model's own check (a ValueError) already says what is wrong; it is put after the field it names."""
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    message = message if message.endswith(".") else f"{message}."
    if param is None:
        return message
    if message.startswith("must "):
        return f"{param} {message}"
    leaf = param.rsplit(".", 1)[-1].split("[", 1)[0]
    if message.startswith((param, leaf)):
        return message
    return f"{param}: {message}"


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def _wrong_type(kind: str, found: bool, value: Any, node: Schema, resolve: Resolver) -> bool:
    """Whether the value's JSON type is none the field takes (a string for a number, true for an integer)."""
    if kind.endswith("_type") or kind in _TYPE_ERRORS:
        return True
    if not found or kind != "union":
        return False
    return not any(_type_fits(value, b, resolve) for b in (union_branches(node) or [node]))


def _type_fits(value: Any, node: Schema, resolve: Resolver) -> bool:
    node = resolve(node) or {}
    if "const" in node or "enum" in node:
        return any(type(value) is type(v) for v in ([node["const"]] if "const" in node else node["enum"]))
    kind = node.get("type")
    if kind is None:
        return "$ref" in node or "properties" in node
    if isinstance(value, bool):
        return kind == "boolean"
    return isinstance(value, _JSON_TYPES.get(str(kind), ()))


__all__ = ["MOVED", "describe", "explain", "moved", "received"]
