"""response_format → the row's Constraint: the three formats, and objects closed to undeclared keys at any depth."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ftserve.core.schemas.completions import ChatCompletionRequest, CompletionRequest
from ftserve.engine.constraint import Constraint
from ftserve.engine.grammar import strict_schema
from ftserve.serving.protocol import response_constraint

MESSAGES = [{"role": "user", "content": "x"}]


def _chat(fmt: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, "response_format": fmt})


def test_formats_become_constraints() -> None:
    assert response_constraint(ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES})) is None
    assert response_constraint(_chat({"type": "text"})) is None
    assert response_constraint(_chat({"type": "json_object"})) == Constraint("json_object")
    assert response_constraint(_chat({"type": "json_schema", "json_schema": {"name": "n"}})) == Constraint(
        "json_object"
    )
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": None}}
    got = response_constraint(_chat(fmt))
    assert got is not None and got.kind == "json_schema"
    assert json.loads(got.source) == {**schema, "additionalProperties": False}
    completion = CompletionRequest.model_validate({"model": "m", "prompt": "x", "response_format": fmt})
    assert response_constraint(completion) == got, "the completions extension is the same"


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": {}}},
        {"type": "json_schema", "json_schema": {"name": "has space"}},
        {"type": "json_schema", "json_schema": {"name": "n", "unknown": 1}},
        {"type": "json_object", "schema": {}},
    ],
)
def test_malformed_formats_are_refused(fmt: object) -> None:
    with pytest.raises(ValidationError):
        _chat(fmt)


def test_strict_schema_closes_objects_at_any_depth_and_keeps_what_is_declared() -> None:
    schema = {
        "$defs": {"Pet": {"type": "object", "properties": {"kind": {"type": "string"}}}},
        "type": "object",
        "properties": {
            "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
            "either": {"anyOf": [{"type": "object", "properties": {}}, {"type": "null"}]},
            "open": {"type": "object", "additionalProperties": True},
            "typed": {"type": "object", "additionalProperties": {"type": "integer"}},
            "patterned": {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
            # a property named like a keyword is a property, not a schema keyword
            "properties": {"type": "string"},
        },
    }
    out = strict_schema(schema)
    assert out["additionalProperties"] is False
    assert out["$defs"]["Pet"]["additionalProperties"] is False
    assert out["properties"]["either"]["anyOf"][0]["additionalProperties"] is False
    assert out["properties"]["open"]["additionalProperties"] is True
    assert out["properties"]["typed"]["additionalProperties"] == {"type": "integer"}
    assert "additionalProperties" not in out["properties"]["patterned"]
    assert out["properties"]["properties"] == {"type": "string"}
    assert "additionalProperties" not in schema, "the client's schema is not modified"


def test_allof_branches_stay_open_so_their_properties_combine() -> None:
    a = {"type": "object", "properties": {"a": {"type": "integer"}, "inner": {"type": "object"}}}
    b = {"type": "object", "properties": {"b": {"type": "integer"}}}
    out = strict_schema({"allOf": [a, b]})
    assert ["additionalProperties" in branch for branch in out["allOf"]] == [False, False]
    assert out["allOf"][0]["properties"]["inner"]["additionalProperties"] is False, "nested objects still close"
