"""Grammar-constrained rows in the real engine on ftserve-tiny (random weights: only the grammar makes its
output valid): bounded schemas always parse, a Lark grammar embeds a schema between fixed text, constrained
rows share a batch with free rows and adapter rows without changing them, refused schemas are errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from ftserve.core.config import Settings
from ftserve.core.resolved import ResolvedModel
from ftserve.core.storage import Storage
from ftserve.engine.constraint import Constraint
from ftserve.engine.engine import ModelRef
from ftserve.engine.errors import InvalidConstraint
from ftserve.engine.generation import Row
from ftserve.engine.sampling import Sampling
from ftserve.serving.refs import model_ref
from tests.inference_adapters import BASE, SOUNDS, SettingsEngine, prompt, train_adapter


class Pet(BaseModel):
    kind: Literal["cat", "dog", "bird"]
    age: int = Field(ge=0, le=30)
    name: str = Field(max_length=6)
    vaccinated: bool


PET = Constraint("json_schema", json.dumps(Pet.model_json_schema() | {"additionalProperties": False}))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Path:
    data = tmp_path_factory.mktemp("constrained")
    train_adapter(Settings(data_dir=data, bases_dir=bases_dir), "ftjob-sounds", SOUNDS, seed=1, epochs=8)
    return data


@pytest.fixture(scope="module")
def engine(data_dir: Path, bases_dir: Path) -> Iterator[SettingsEngine]:
    # A wide window: rows submitted one after another share one prefill and then every decode step.
    settings = Settings(data_dir=data_dir, bases_dir=bases_dir, batch_window_ms=300, grammar_cache_size=3)
    e = SettingsEngine(settings)
    yield e
    e.close()


def _ids(engine: SettingsEngine, text: str) -> list[int]:
    return list(engine.tokenizer(BASE)(text)["input_ids"])


def _run_together(engine: SettingsEngine, jobs: list[tuple[ModelRef, list[Row]]]) -> None:
    """Submit every request at once (one prefill, shared decode steps) and wait for all of them."""
    left = threading.Semaphore(0)
    errors: list[BaseException] = []

    def done(error: BaseException | None) -> None:
        if error is not None:
            errors.append(error)
        left.release()

    for ref, rows in jobs:
        engine.submit(ref, rows, done)
    for _ in jobs:
        assert left.acquire(timeout=120)
    assert not errors, errors


def test_bounded_schema_always_parses_on_a_random_model(engine: SettingsEngine) -> None:
    rows = [
        Row(_ids(engine, prompt(a)), Sampling(max_tokens=60, temperature=1.0, seed=s, constraint=PET))
        for s, a in enumerate(["cat", "dog", "cow", "owl"] * 4)
    ]
    engine.run(ModelRef(BASE, BASE), rows)
    for r in rows:
        assert r.finish_reason == "stop", r.text
        Pet.model_validate_json(r.text)
    assert len({r.text for r in rows}) > 4, "sampling still varies within the grammar"


def test_constrained_rows_share_a_batch_without_changing_their_neighbours(
    engine: SettingsEngine, data_dir: Path
) -> None:
    base = ModelRef(BASE, BASE)
    sounds = model_ref(ResolvedModel("ft:sounds", BASE, "ftjob-sounds"), Storage(engine.settings))

    def free(adapter: bool) -> Row:
        return Row(_ids(engine, prompt("dog" if adapter else "cat")), Sampling(max_tokens=12, temperature=0))

    alone_base, alone_adapter = free(False), free(True)
    engine.run(base, [alone_base])
    engine.run(sounds, [alone_adapter])

    before = len(engine.scheduler.prefills)
    mixed_base, mixed_adapter = free(False), free(True)
    constrained = Row(_ids(engine, prompt("cow")), Sampling(max_tokens=60, temperature=0, constraint=PET))
    constrained_adapter = Row(_ids(engine, prompt("cow")), Sampling(max_tokens=60, temperature=0, constraint=PET))
    _run_together(engine, [(base, [mixed_base, constrained]), (sounds, [mixed_adapter, constrained_adapter])])

    assert list(engine.scheduler.prefills)[before:] == [(4, 2)], "all four rows (two models) in one prefill"
    assert (mixed_base.text, mixed_base.token_ids) == (alone_base.text, alone_base.token_ids)
    assert (mixed_adapter.text, mixed_adapter.token_ids) == (alone_adapter.text, alone_adapter.token_ids)
    assert mixed_adapter.text.strip().startswith("woof"), "the adapter row is still the adapter's"
    for r in (constrained, constrained_adapter):
        assert r.finish_reason == "stop"
        Pet.model_validate_json(r.text)


def test_lark_grammar_embeds_a_json_schema_between_fixed_text(engine: SettingsEngine) -> None:
    args = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 99}}}
    args |= {"required": ["n"], "additionalProperties": False}
    lark = f'start: "CALL add(" args ") END"\nargs: %json{json.dumps(args)}'
    rows = [
        Row(
            _ids(engine, prompt("cat")),
            Sampling(max_tokens=40, temperature=1.0, seed=s, constraint=Constraint("lark", lark)),
        )
        for s in range(4)
    ]
    engine.run(ModelRef(BASE, BASE), rows)
    for r in rows:
        assert r.finish_reason == "stop"
        assert r.text.startswith("CALL add(") and r.text.endswith(") END"), r.text
        n = json.loads(r.text.removeprefix("CALL add(").removesuffix(") END"))["n"]
        assert 1 <= n <= 99


def test_logprobs_are_the_models_own_and_length_still_applies(engine: SettingsEngine) -> None:
    ids = _ids(engine, prompt("cat"))
    free = Row(ids, Sampling(max_tokens=1, temperature=0, logprobs=5))
    constrained = Row(ids, Sampling(max_tokens=3, temperature=0, logprobs=5, constraint=PET))
    engine.run(ModelRef(BASE, BASE), [free, constrained])
    # The first token is forced ('{'), yet its alternatives are the model's unmasked distribution.
    assert constrained.text.startswith("{")
    assert constrained.top_logprobs[0] == free.top_logprobs[0]
    assert constrained.finish_reason == "length" and len(constrained.token_ids) == 3


def test_json_object_is_an_object(engine: SettingsEngine) -> None:
    row = Row(
        _ids(engine, prompt("cat")), Sampling(max_tokens=40, temperature=0, constraint=Constraint("json_object"))
    )
    engine.run(ModelRef(BASE, BASE), [row])
    assert row.text.startswith("{")
    if row.finish_reason == "stop":  # a random model may not close an unbounded string in 40 tokens
        assert isinstance(json.loads(row.text), dict)


def test_refused_constraints_and_the_bounded_cache(engine: SettingsEngine) -> None:
    unique = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    with pytest.raises(InvalidConstraint, match="uniqueItems") as refused:
        engine.check_constraint(BASE, Constraint("json_schema", json.dumps(unique)))
    assert refused.value.code == "invalid_json_schema"
    with pytest.raises(InvalidConstraint) as bad_lark:
        engine.check_constraint(BASE, Constraint("lark", "start: ((("))
    assert bad_lark.value.code == "invalid_grammar"
    with pytest.raises(InvalidConstraint, match="not valid JSON"):
        engine.check_constraint(BASE, Constraint("json_schema", "{nope"))
    # Submitting a refused constraint fails the request before anything runs.
    with pytest.raises(InvalidConstraint):
        engine.run(ModelRef(BASE, BASE), [Row([1, 2], Sampling(constraint=Constraint("lark", "start: (((")))])

    grammars = engine.resident(BASE).grammars
    schemas = [Constraint("json_schema", json.dumps({"enum": [i]})) for i in range(5)]
    first = grammars.compile(schemas[0])
    assert grammars.compile(schemas[0]) is first, "compiled once, then cached"
    for c in schemas[1:]:
        grammars.compile(c)
    assert len(grammars) == 3, "the cache holds grammar_cache_size entries"
    assert grammars.compile(schemas[0]) is not first, "the least recently used was dropped"


def test_constrained_draws_follow_the_masked_distribution(engine: SettingsEngine) -> None:
    """The free draw kept when allowed, else a masked draw: together exactly p restricted to the allowed tokens."""
    import torch

    from ftserve.engine.generation import _draw_constrained

    grammar = engine.resident(BASE).grammars.row(Constraint("lark", 'start: "cat" | "dog" | "cow" | "sheep"'))
    allowed = torch.from_numpy(grammar.allowed().copy())
    logits = torch.randn(allowed.shape[0], generator=torch.Generator().manual_seed(0)) * 2
    logits[allowed.nonzero()[0]] += 4  # one allowed token likely enough that the free draw often keeps it
    expected = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
    row = Row([1], Sampling(temperature=1.0, seed=7))
    row._gen = torch.Generator().manual_seed(7)
    draws = 4000
    counts = torch.bincount(
        torch.tensor([_draw_constrained(row, grammar, logits, int(logits.argmax())) for _ in range(draws)]),
        minlength=allowed.shape[0],
    )
    assert int(counts[~allowed].sum()) == 0
    assert float((counts / draws - expected).abs().max()) < 0.03
    greedy = Row([1], Sampling(temperature=0))
    assert _draw_constrained(greedy, grammar, logits, int(logits.argmax())) == int(expected.argmax())
