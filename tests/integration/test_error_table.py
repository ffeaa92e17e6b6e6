"""Errors speak the user's words (issue 28): one table of wrong values sent to every request model of the api and
inference roles (jobs and their nested method/hyperparameters/extensions, batches, completions, chat completions,
the files form, list queries), each answered 400 with `param` exactly as the user wrote the field and a message
naming what the field takes and what was received; unknown routes (404) and methods (405) named like OpenAI's;
moved fields named by their new place; malformed JSON; bool-as-int, string-as-number and NaN refused.

The app is the real one (create_app, both roles, a migrated SQLite data dir) behind FastAPI's TestClient: every
case fails validation before a route's code runs, so no model is loaded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from fastapi.testclient import TestClient

from ftserve.control.db.migrate import upgrade_head
from ftserve.control.main import create_app
from ftserve.core.config import Settings
from ftserve.core.datasets.batch import parse_line
from ftserve.core.datasets.formats import DatasetError
from tests.jobrows import make_job

JOBS, CHAT, COMPLETIONS, BATCHES = "/v1/fine_tuning/jobs", "/v1/chat/completions", "/v1/completions", "/v1/batches"
JOB = {"model": "ftserve-tiny", "training_file": "file-abc"}
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT_BODY = {"model": "ftserve-tiny", "messages": MESSAGES}
PROMPT = {"model": "ftserve-tiny", "prompt": "The"}
BATCH = {"input_file_id": "file-abc", "endpoint": "/v1/completions", "completion_window": "24h"}
AUTO_EPOCHS = '"auto" or an integer from 1 to 50'
AUTO_BATCH = '"auto" or an integer from 1 to 256'
AUTO_LR = '"auto" or a number greater than 0 and at most 10'


class Case(NamedTuple):
    name: str
    method: str
    path: str
    body: Any  # a JSON value, raw text (str), or None
    status: int
    param: str | None
    says: tuple[str, ...]  # every one of these is in the message
    code: str | None = "invalid_value"


def hp(**values: Any) -> dict[str, Any]:
    return {**JOB, "hyperparameters": values}


def dpo(**values: Any) -> dict[str, Any]:
    return {**JOB, "method": {"type": "dpo", "dpo": {"hyperparameters": values}}}


def supervised(**values: Any) -> dict[str, Any]:
    return {**JOB, "method": {"type": "supervised", "supervised": {"hyperparameters": values}}}


def ext(**values: Any) -> dict[str, Any]:
    return {**JOB, "extensions": values}


def chat(**fields: Any) -> dict[str, Any]:
    return {**CHAT_BODY, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {**PROMPT, **fields}


def bad(name: str, path: str, body: Any, param: str | None, *says: str, code: str = "invalid_value") -> Case:
    return Case(name, "POST", path, body, 400, param, says, code)


def wrong_type(name: str, path: str, body: Any, param: str | None, *says: str) -> Case:
    return bad(name, path, body, param, *says, code="invalid_type")


CASES = [
    # -- fine-tuning jobs: hyperparameters, top level and nested, "auto" | number unions collapsed into one --
    bad("n_epochs-0", JOBS, hp(n_epochs=0), "hyperparameters.n_epochs", AUTO_EPOCHS, "got 0"),
    bad("n_epochs-51", JOBS, hp(n_epochs=51), "hyperparameters.n_epochs", AUTO_EPOCHS, "got 51"),
    bad("n_epochs-word", JOBS, hp(n_epochs="three"), "hyperparameters.n_epochs", AUTO_EPOCHS, 'got "three"'),
    wrong_type("n_epochs-bool", JOBS, hp(n_epochs=True), "hyperparameters.n_epochs", AUTO_EPOCHS, "got true"),
    bad("n_epochs-string-number", JOBS, hp(n_epochs="3"), "hyperparameters.n_epochs", AUTO_EPOCHS, 'got "3"'),
    wrong_type("n_epochs-decimal", JOBS, hp(n_epochs=2.5), "hyperparameters.n_epochs", AUTO_EPOCHS, "got 2.5"),
    bad("batch_size-257", JOBS, hp(batch_size=257), "hyperparameters.batch_size", AUTO_BATCH, "got 257"),
    bad("batch_size-0-nested", JOBS, supervised(batch_size=0), "method.supervised.hyperparameters.batch_size",
        AUTO_BATCH, "got 0"),
    bad("lr-0", JOBS, hp(learning_rate_multiplier=0), "hyperparameters.learning_rate_multiplier", AUTO_LR, "got 0"),
    bad("lr-negative", JOBS, hp(learning_rate_multiplier=-1), "hyperparameters.learning_rate_multiplier", AUTO_LR,
        "got -1"),
    bad("lr-string-NaN", JOBS, hp(learning_rate_multiplier="NaN"), "hyperparameters.learning_rate_multiplier",
        AUTO_LR, 'got "NaN"'),
    bad("lr-NaN", JOBS, json.dumps(JOB)[:-1] + ', "hyperparameters": {"learning_rate_multiplier": NaN}}',
        "hyperparameters.learning_rate_multiplier", "finite number", "got NaN"),
    bad("lr-Infinity", JOBS, json.dumps(JOB)[:-1] + ', "hyperparameters": {"learning_rate_multiplier": Infinity}}',
        "hyperparameters.learning_rate_multiplier", "finite number", "got Infinity"),
    bad("beta-0", JOBS, dpo(beta=0), "method.dpo.hyperparameters.beta",
        '"auto" or a number greater than 0 and at most 2', "got 0"),
    bad("beta-3", JOBS, dpo(beta=3), "method.dpo.hyperparameters.beta", "at most 2", "got 3"),
    bad("beta-string", JOBS, dpo(beta="0.1"), "method.dpo.hyperparameters.beta", '"auto" or a number', 'got "0.1"'),
    bad("dpo-epochs", JOBS, dpo(n_epochs=0), "method.dpo.hyperparameters.n_epochs", AUTO_EPOCHS, "got 0"),
    bad("method-type", JOBS, {**JOB, "method": {"type": "rlhf"}}, "method.type",
        '"supervised", "dpo", "reinforcement"', 'got "rlhf"'),
    # -- fine-tuning jobs: the other fields and ftserve's extensions --
    bad("seed-negative", JOBS, {**JOB, "seed": -1}, "seed", "an integer from 0 to 2147483647", "got -1"),
    wrong_type("seed-string", JOBS, {**JOB, "seed": "42"}, "seed", "an integer", 'got "42"'),
    bad("suffix-long", JOBS, {**JOB, "suffix": "x" * 65}, "suffix", "at most 64 characters", "got"),
    bad("suffix-pattern", JOBS, {**JOB, "suffix": "a b"}, "suffix", "matching ^[A-Za-z0-9_.-]*$", 'got "a b"'),
    wrong_type("model-number", JOBS, {**JOB, "model": 5}, "model", "a non-empty string", "got 5"),
    bad("model-empty", JOBS, {**JOB, "model": ""}, "model", "a non-empty string", 'got ""'),
    wrong_type("training_file-list", JOBS, {**JOB, "training_file": ["file-a"]}, "training_file", "a non-empty string",
               'got ["file-a"]'),
    wrong_type("metadata-value", JOBS, {**JOB, "metadata": {"k": 1}}, "metadata.k", "a string", "got 1"),
    bad("metadata-pairs", JOBS, {**JOB, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata",
        "at most 16 key-value pairs", "got 17"),
    bad("prompt_loss_weight-2", JOBS, ext(prompt_loss_weight=2), "extensions.prompt_loss_weight",
        "a number from 0 to 1", "got 2"),
    wrong_type("lora_rank-string", JOBS, ext(lora_rank="8"), "extensions.lora_rank", "an integer from 1 to 256",
               'got "8"'),
    wrong_type("lora_rank-bool", JOBS, ext(lora_rank=True), "extensions.lora_rank", "an integer from 1 to 256",
               "got true"),
    bad("lora_dropout-1", JOBS, ext(lora_dropout=1), "extensions.lora_dropout",
        "a number of at least 0 and less than 1", "got 1"),
    bad("lr_scheduler", JOBS, ext(lr_scheduler="step"), "extensions.lr_scheduler",
        '"linear", "cosine", "constant"', 'got "step"'),
    bad("target_modules-empty", JOBS, ext(target_modules=[]), "extensions.target_modules",
        "a non-empty array of strings", "got []"),
    # -- moved and unknown fields --
    bad("moved-plw-in-hp", JOBS, hp(prompt_loss_weight=0.1), "hyperparameters.prompt_loss_weight",
        "extensions.prompt_loss_weight", code="moved_parameter"),
    bad("moved-plw-in-method", JOBS, supervised(prompt_loss_weight=0.1),
        "method.supervised.hyperparameters.prompt_loss_weight", "extensions.prompt_loss_weight",
        code="moved_parameter"),
    bad("moved-plw-top", JOBS, {**JOB, "prompt_loss_weight": 0.1}, "prompt_loss_weight",
        "extensions.prompt_loss_weight", code="moved_parameter"),
    bad("moved-n_epochs-top", JOBS, {**JOB, "n_epochs": 3}, "n_epochs", "hyperparameters.n_epochs",
        code="moved_parameter"),
    bad("moved-lora_rank-in-hp", JOBS, hp(lora_rank=8), "hyperparameters.lora_rank", "extensions.lora_rank",
        code="moved_parameter"),
    bad("moved-beta-in-hp", JOBS, hp(beta=0.1), "hyperparameters.beta", "method.dpo.hyperparameters.beta",
        code="moved_parameter"),
    bad("moved-functions", CHAT, chat(functions=[{"name": "f"}]), "functions", "'tools'", code="moved_parameter"),
    bad("unknown-field", JOBS, {**JOB, "epochs": 3}, "epochs", "Unknown parameter: 'epochs'", "hyperparameters",
        code="unknown_parameter"),
    bad("unknown-nested", JOBS, hp(epochs=3), "hyperparameters.epochs", "Unknown parameter", "n_epochs",
        code="unknown_parameter"),
    bad("missing-model", JOBS, {"training_file": "file-abc"}, "model", "Missing required parameter: 'model'",
        code="missing_required_parameter"),
    # -- chat completions --
    bad("temperature-3", CHAT, chat(temperature=3), "temperature", "a number from 0 to 2", "got 3"),
    bad("temperature-NaN", CHAT, json.dumps(CHAT_BODY)[:-1] + ', "temperature": NaN}', "temperature",
        "a finite number from 0 to 2", "got NaN"),
    wrong_type("temperature-string", CHAT, chat(temperature="0.5"), "temperature", "a number from 0 to 2",
               'got "0.5"'),
    wrong_type("max_tokens-string", CHAT, chat(max_tokens="5"), "max_tokens", "an integer of at least 1", 'got "5"'),
    bad("max_tokens-0", CHAT, chat(max_tokens=0), "max_tokens", "an integer of at least 1", "got 0"),
    wrong_type("n-bool", CHAT, chat(n=True), "n", "an integer from 1 to 16", "got true"),
    bad("n-17", CHAT, chat(n=17), "n", "an integer from 1 to 16", "got 17"),
    bad("top_p-0", CHAT, chat(top_p=0), "top_p", "a number greater than 0 and at most 1", "got 0"),
    bad("presence_penalty", CHAT, chat(presence_penalty=-3), "presence_penalty", "a number from -2 to 2", "got -3"),
    bad("top_logprobs-6", CHAT, chat(logprobs=True, top_logprobs=6), "top_logprobs", "an integer from 0 to 5",
        "got 6"),
    wrong_type("logprobs-string", CHAT, chat(logprobs="yes"), "logprobs", "a boolean", 'got "yes"'),
    wrong_type("stream-int", CHAT, chat(stream=1), "stream", "a boolean", "got 1"),
    bad("role", CHAT, chat(messages=[*MESSAGES, {"role": "robot", "content": "x"}]), "messages[1].role",
        '"system"', '"assistant"', 'got "robot"'),
    wrong_type("content-number", CHAT, chat(messages=[*MESSAGES, *MESSAGES, {"role": "user", "content": 5}]),
               "messages[2].content", "a string or an array of objects", "got 5"),
    wrong_type("content-part", CHAT, chat(messages=[{"role": "user", "content": [5]}]), "messages[0].content[0]",
               "an object", "got 5"),
    bad("messages-empty", CHAT, chat(messages=[]), "messages", "a non-empty array of objects", "got []"),
    bad("missing-messages", CHAT, {"model": "ftserve-tiny"}, "messages", "Missing required parameter",
        code="missing_required_parameter"),
    wrong_type("stop-number", CHAT, chat(stop=[5]), "stop[0]", "a string", "got 5"),
    bad("tool_choice", CHAT, chat(tool_choice="sometimes"), "tool_choice", '"none", "auto", "required"',
        "an object", 'got "sometimes"'),
    bad("tool_choice-name", CHAT, chat(tool_choice={"type": "function", "function": {}}),
        "tool_choice.function.name", "Missing required parameter", code="missing_required_parameter"),
    bad("tool-name", CHAT, chat(tools=[{"type": "function", "function": {"name": "a b"}}]),
        "tools[0].function.name", "matching ^[a-zA-Z0-9_-]{1,64}$", 'got "a b"'),
    bad("response_format-type", CHAT, chat(response_format={"type": "xml"}), "response_format.type",
        '"json_object"', '"json_schema"', '"text"', 'got "xml"'),
    bad("json_schema-name", CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "a b"}}),
        "response_format.json_schema.name", "at most 64 characters", 'got "a b"'),
    bad("seed-2^64", CHAT, chat(seed=2**64), "seed",
        "an integer from -9223372036854775808 to 9223372036854775807", "got 18446744073709551616"),
    bad("logit_bias-200", CHAT, chat(logit_bias={"5": 200}), "logit_bias.5", "a number from -100 to 100", "got 200"),
    bad("logit_bias-key", COMPLETIONS, completion(logit_bias={"cat": 1}), "logit_bias", "token ids", "got 'cat'"),
    wrong_type("logit_bias-string", CHAT, chat(logit_bias={"5": "1"}), "logit_bias.5", "a number", 'got "1"'),
    # -- completions --
    bad("prompt-mixed", COMPLETIONS, completion(prompt=["a", 5]), "prompt", "a non-empty string",
        "a non-empty array of strings", 'got ["a", 5]'),
    bad("logprobs-6", COMPLETIONS, completion(logprobs=6), "logprobs", "an integer from 0 to 5", "got 6"),
    wrong_type("max_tokens-decimal", COMPLETIONS, completion(max_tokens=2.5), "max_tokens", "an integer of at least 0",
               "got 2.5"),
    wrong_type("echo-string", COMPLETIONS, completion(echo="true"), "echo", "a boolean", 'got "true"'),
    bad("best_of-0", COMPLETIONS, completion(best_of=0), "best_of", "an integer from 1 to 16", "got 0"),
    # -- batches --
    wrong_type("input_file_id-number", BATCHES, {**BATCH, "input_file_id": 7}, "input_file_id", "a string", "got 7"),
    bad("batch-missing-endpoint", BATCHES, {k: v for k, v in BATCH.items() if k != "endpoint"}, "endpoint",
        "Missing required parameter: 'endpoint'", code="missing_required_parameter"),
    bad("batch-unknown", BATCHES, {**BATCH, "priority": 1}, "priority", "Unknown parameter", code="unknown_parameter"),
    # -- bodies that are no JSON object --
    bad("malformed-json", JOBS, '{"model": "ftserve-tiny",', None, "not valid JSON", "position 25",
        code="invalid_json"),
    wrong_type("body-array", JOBS, [1, 2], None, "must be a JSON object", "got [1, 2]"),
]  # fmt: skip

QUERY_AND_FORM = [
    Case("files-limit", "GET", "/v1/files?limit=0", None, 400, "limit", ("an integer from 1 to 10000", 'got "0"')),
    Case("files-order", "GET", "/v1/files?order=up", None, 400, "order", ('"asc", "desc"', 'got "up"')),
    Case("jobs-limit", "GET", "/v1/fine_tuning/jobs?limit=101", None, 400, "limit", ("an integer from 1 to 100",)),
    Case("batches-limit", "GET", "/v1/batches?limit=x", None, 400, "limit", ("an integer", 'got "x"'), "invalid_type"),
    Case("events-limit", "GET", "/v1/fine_tuning/jobs/ftjob-x/events?limit=0", None, 400, "limit",
         ("an integer from 1 to 100",)),
    Case("checkpoints-limit", "GET", "/v1/fine_tuning/jobs/ftjob-x/checkpoints?limit=1000", None, 400, "limit",
         ("an integer from 1 to 100", 'got "1000"')),
]  # fmt: skip

ROUTES = [
    Case("unknown-route", "POST", "/v1/embeddings", {}, 404, None, ("Invalid URL (POST /v1/embeddings)",), None),
    Case("unknown-route-get", "GET", "/v1/xyz", None, 404, None, ("Invalid URL (GET /v1/xyz)",), None),
    Case("wrong-method", "GET", CHAT, None, 405, None, ("Invalid method for URL (GET /v1/chat/completions)",), None),
    Case("wrong-method-files", "PUT", "/v1/files", None, 405, None, ("Invalid method for URL (PUT /v1/files)",
                                                                       "GET or POST"), None),
    Case("wrong-method-job", "DELETE", "/v1/fine_tuning/jobs/ftjob-x", None, 405, None,
         ("Invalid method for URL (DELETE /v1/fine_tuning/jobs/ftjob-x)",), None),
]  # fmt: skip


@pytest.fixture(scope="module")
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("errors")
    settings = Settings(data_dir=data, bases_dir=data / "bases")
    upgrade_head(settings.resolved_database_url())
    return settings


@pytest.fixture(scope="module")
def client(app_settings: Settings) -> Iterator[TestClient]:
    yield TestClient(create_app(app_settings))  # no lifespan: no reaper, no batch runner, no model loaded


def _send(client: TestClient, case: Case) -> Any:
    if case.body is None:
        return client.request(case.method, case.path)
    content = case.body if isinstance(case.body, str) else json.dumps(case.body)
    return client.request(case.method, case.path, content=content, headers={"content-type": "application/json"})


def test_the_table_covers_every_request_model() -> None:
    assert len(CASES) + len(QUERY_AND_FORM) >= 40
    assert {c.path for c in CASES} == {JOBS, CHAT, COMPLETIONS, BATCHES}
    names = {c.name for c in CASES}
    assert {"n_epochs-bool", "max_tokens-string", "temperature-NaN", "malformed-json", "moved-plw-in-hp"} <= names


@pytest.mark.parametrize("case", CASES + QUERY_AND_FORM + ROUTES, ids=lambda c: c.name)
def test_errors_name_the_field_what_it_takes_and_what_was_received(client: TestClient, case: Case) -> None:
    answer = _send(client, case)
    assert answer.status_code == case.status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == case.param, error
    assert error["code"] == case.code, error
    for words in case.says:
        assert words in error["message"], (words, error["message"])
    assert "literal[" not in error["message"] and "Input should" not in error["message"], error["message"]
    if case.status == 405:
        assert answer.headers["allow"]


def test_the_files_form_names_its_missing_field(client: TestClient, tmp_path: Path) -> None:
    answer = client.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")})
    assert answer.status_code == 400
    assert answer.json()["error"] | {"message": None} == {
        "message": None,
        "type": "invalid_request_error",
        "param": "purpose",
        "code": "missing_required_parameter",
    }
    assert answer.json()["error"]["message"] == "Missing required parameter: 'purpose'."


def test_valid_json_types_are_still_taken(client: TestClient) -> None:
    """What the SDK sends: integers for numbers, "auto", nulls for defaults; these fail later (no such file or
    model), never on their types."""
    for path, body in [
        (JOBS, hp(n_epochs="auto", batch_size=4, learning_rate_multiplier=2)),
        (JOBS, dpo(beta=1, learning_rate_multiplier=0.5)),
        (JOBS, ext(prompt_loss_weight=0, lora_alpha=16, lora_dropout=0.05)),
        (CHAT, chat(temperature=1, top_p=1, n=None, max_tokens=None, logit_bias={"5": -100})),
    ]:
        answer = client.post(path, json={**body, "model": "no-such-model"})
        assert answer.status_code == 404, answer.text  # the model or file does not exist: the body was valid


@pytest.mark.parametrize(
    ("url", "body", "words"),
    [
        (COMPLETIONS, completion(max_tokens="5"), 'body.max_tokens must be an integer of at least 0; got "5".'),
        (CHAT, chat(temperature=True), "body.temperature must be a number from 0 to 2; got true."),
        (CHAT, chat(messages=[{"role": "robot"}]), 'body.messages[0].role must be one of "system"'),
        (COMPLETIONS, completion(n_epochs=1), "Unknown parameter: 'body.n_epochs'."),
    ],
)
def test_batch_lines_are_explained_by_the_same_translation(url: str, body: dict[str, Any], words: str) -> None:
    line = {"custom_id": "a", "method": "POST", "url": url, "body": body}
    with pytest.raises(DatasetError) as err:
        parse_line(3, line)
    assert err.value.code == "invalid_body" and words in err.value.describe(), err.value.describe()
    assert err.value.describe().startswith("line 3: ")


@pytest.mark.parametrize(
    ("status", "action", "words"),
    [
        ("cancelled", "cancel", "has already been cancelled; only a job that has not finished can be cancelled."),
        ("succeeded", "cancel", "has already succeeded; only a job that has not finished can be cancelled."),
        ("failed", "cancel", "has already failed; only a job that has not finished can be cancelled."),
        ("succeeded", "pause", "has already succeeded; only queued or running jobs can be paused."),
        ("running", "resume", "is running; only paused jobs can be resumed."),
    ],
)
def test_a_job_state_refusal_is_a_correct_sentence(
    client: TestClient, app_settings: Settings, status: str, action: str, words: str
) -> None:
    job_id = make_job(app_settings, status)
    answer = client.post(f"{JOBS}/{job_id}/{action}")
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == f"Job {job_id} {words}"
