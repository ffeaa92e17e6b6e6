"""The Evals API's torch-free parts: items checked against the item_schema one by one (naming the line), run counts
added up from graded items, input_messages rendered over an item, and OpenAI's pass rule per criterion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftserve import graders
from ftserve.core.errors import InvalidRequest
from ftserve.core.evals.items import content_items, file_items, schema_problem
from ftserve.core.evals.records import GradedItem, ModelUsage, tally
from ftserve.core.schemas.evals import ItemReferenceInput, TemplateInput
from ftserve.graders import input_messages
from ftserve.serving.eval_grading import criteria, grade

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q"]}


def test_items_error_alone_naming_their_line(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    lines = [{"item": {"q": "a"}}, {"item": {"n": 1}}, "", {"item": {"q": "b", "n": "x"}}, [1], {"item": {"q": "c"}}]
    path.write_text("\n".join(json.dumps(x) if x != "" else "" for x in lines) + "\n")
    items = file_items(path, 1 << 20, SCHEMA)
    assert [i.index for i in items] == [0, 1, 2, 3, 4]
    assert [i.error is None for i in items] == [True, False, False, False, True]
    assert items[1].error and items[1].error.startswith("line 2:") and "'q' is a required property" in items[1].error
    assert items[2].error and items[2].error.startswith("line 4: item.n ")
    assert items[3].error and "line 5" in items[3].error and "'item' object" in items[3].error
    inline = content_items([{"item": {"q": "a"}, "sample": {"output_text": "x"}}, {"item": {}}], SCHEMA)
    assert inline[0].sample == {"output_text": "x"} and inline[1].error and inline[1].error.startswith("content[1]:")


def test_schema_problems_are_found_at_creation() -> None:
    assert schema_problem(SCHEMA) is None
    assert schema_problem({"type": 3}) is not None
    assert schema_problem({"$ref": "#/$defs/missing"}) is not None


def test_tally_adds_up_criteria_and_models() -> None:
    start = [{"testing_criteria": "a", "passed": 1, "failed": 0}, {"testing_criteria": "b", "passed": 0, "failed": 0}]
    items = [
        GradedItem(0, "pass", {}, [], {}, (True, True), (ModelUsage("m", 3, 2),)),
        GradedItem(1, "error", {}, [], {}, (False, None), (ModelUsage("m", 4, 1), ModelUsage("judge", 5, 1))),
        GradedItem(2, "error", {}, [], {}),  # never graded: counts nowhere
    ]
    per_criteria, per_model = tally(start, [], items)
    assert [(c["passed"], c["failed"]) for c in per_criteria] == [(2, 1), (1, 0)]
    assert {u["model_name"]: (u["invocation_count"], u["total_tokens"]) for u in per_model} == {
        "m": (2, 10),
        "judge": (1, 6),
    }


def test_input_messages_render_over_the_item() -> None:
    template = TemplateInput.model_validate(
        {"type": "template", "template": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": {"type": "input_text", "text": "Q: {{item.q}}"}}]}
    )  # fmt: skip
    assert input_messages.render(template, {"q": "why?"}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: why?"},
    ]
    with pytest.raises(input_messages.ItemMismatch):
        input_messages.render(template, {"n": 1})
    ref = ItemReferenceInput(type="item_reference", item_reference="item.chat")
    chat = [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    assert input_messages.render(ref, {"chat": chat}) == [{"role": "user", "content": "hi"}]
    with pytest.raises(InvalidRequest) as err:
        input_messages.check(
            TemplateInput.model_validate(
                {"type": "template", "template": [{"role": "user", "content": "{{sample.output_text}}"}]}
            ),
            "data_source.input_messages",
        )
    assert err.value.param == "data_source.input_messages.template[0].content"


def _criterion(**spec: Any) -> dict[str, Any]:
    return {"name": spec.get("type", "c"), "input": "{{sample.output_text}}", "reference": "{{item.q}}", **spec}


def test_pass_rules_and_item_status() -> None:
    found = criteria(
        [
            _criterion(type="string_check", operation="eq"),
            _criterion(type="text_similarity", evaluation_metric="fuzzy_match", pass_threshold=0.5),
        ],
        graders.Limits(),
        graders.JudgeConfig(),
    )
    usage = (ModelUsage("m", 1, 1),)
    same = grade(found, 0, {"q": "meow"}, graders.Sample.from_text("meow"), {}, usage)
    close = grade(found, 1, {"q": "meow"}, graders.Sample.from_text("meoww"), {}, usage)
    missing = grade(found, 2, {"n": 1}, graders.Sample.from_text("meow"), {}, usage)
    assert (same.status, same.criteria) == ("pass", (True, True))
    assert (close.status, close.criteria) == ("fail", (False, True))
    assert (missing.status, missing.criteria) == ("error", (None, None))
    assert missing.results[0]["error"]["code"] == "invalid_variable_error" and missing.results[0]["passed"] is False
    assert same.usage == usage
