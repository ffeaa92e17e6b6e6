"""Forced tool calls in the real engine on ftserve-tiny (random weights: only the grammar shapes the output): a
non-strict function schema (what LangChain and most callers send) gets exactly its declared keys, so
`fn(**args)` works; a schema that opts in to more keys (`additionalProperties: true`) still gets them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ftserve.core.config import Settings
from ftserve.core.schemas.completions import ChatCompletionRequest
from ftserve.engine.engine import ModelRef
from ftserve.engine.generation import Row
from ftserve.engine.sampling import Sampling
from ftserve.serving.tools import ToolPlan, read_reply, tool_plan
from tests.inference_adapters import BASE, SettingsEngine

# No `additionalProperties`, no `strict`: JSON Schema leaves such an object open.
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Rome", "Oslo", "Lima"]},
        "unit": {"type": "string", "enum": ["c", "f"]},
    },
    "required": ["city"],
}
PROMPTS = ["Weather in Rome?", "Is it cold in Oslo, in fahrenheit?", "Lima today", "{"]
# An extra key (and the `properties` key a model copies from the schema it was shown) after the declared ones.
EXTRA = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c", "properties": {}}}\n</tool_call>'
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[SettingsEngine]:
    e = SettingsEngine(Settings(data_dir=tmp_path_factory.mktemp("forced_tools"), bases_dir=bases_dir))
    yield e
    e.close()


def _plan(parameters: dict[str, Any], tool_choice: Any) -> ToolPlan:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
    req = ChatCompletionRequest.model_validate(
        {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": tool_choice}
        # One call per reply: a random model given the choice of another call may go on to max_tokens.
        | {"parallel_tool_calls": False}
    )
    plan = tool_plan(req)
    assert plan is not None and plan.constraint is not None
    return plan


def _accepts(engine: SettingsEngine, plan: ToolPlan, text: str) -> bool:
    """Whether the plan's compiled grammar lets the model write `text` (as this tokenizer splits it)."""
    assert plan.constraint is not None
    grammar = engine.resident(BASE).grammars.row(plan.constraint)
    try:
        for token in engine.tokenizer(BASE)(text, add_special_tokens=False)["input_ids"]:
            grammar.accept(token)
    except RuntimeError:
        return False
    return bool(grammar.matcher.is_accepting())


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_non_strict_schema_gets_only_its_declared_keys(engine: SettingsEngine, tool_choice: Any) -> None:
    plan = _plan(WEATHER, tool_choice)
    assert not _accepts(engine, plan, EXTRA), "the grammar refuses a key the function does not declare"
    assert _accepts(engine, plan, EXTRA.replace(', "properties": {}', ""))
    tok = engine.tokenizer(BASE)
    rows = [
        Row(
            list(tok(p)["input_ids"]),
            Sampling(max_tokens=80, temperature=1.0, seed=seed, constraint=plan.constraint),
        )
        for p in PROMPTS
        for seed in range(3)
    ]
    engine.run(ModelRef(BASE, BASE), rows)
    for row in rows:
        content, calls, finish = read_reply(plan, row.text, row.finish_reason)
        assert finish == "tool_calls" and content is None and calls, row.text
        for call in calls:
            args = json.loads(call.arguments)
            assert set(args) <= {"city", "unit"} and "city" in args, row.text


def test_a_schema_that_opts_in_still_takes_extra_keys(engine: SettingsEngine) -> None:
    for extra in (True, {"type": "object"}):
        plan = _plan({**WEATHER, "additionalProperties": extra}, "required")
        assert _accepts(engine, plan, EXTRA), extra
