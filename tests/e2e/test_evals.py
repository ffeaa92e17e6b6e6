"""The Evals API end to end with the official client: an eval with testing criteria, runs of the base and of a
fine-tuned model through the inference role's eval runner (counts checked against the output items), items that
fail the item_schema or whose python criterion raises error alone, cancel, delete, tenancy, and a run that
survives SIGKILL of the inference role."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session

from ftserve.control.db.session import make_engine
from ftserve.control.db.tables import ApiKey
from ftserve.control.services.auth import create_key
from ftserve.core.config import Settings
from tests.inference_adapters import BASE, SOUNDS, register, train_adapter
from tests.servers import FTSERVE, Proc, Service, base_env, free_port, wait_http

# The adapter is trained in-process straight into the server's data dir.
pytestmark = pytest.mark.local_storage

ITEM_SCHEMA = {
    "type": "object",
    "properties": {"animal": {"type": "string"}, "sound": {"type": "string"}},
    "required": ["animal", "sound"],
}
CRITERIA: list[dict[str, Any]] = [
    {
        "type": "string_check",
        "name": "exact sound",
        "input": "{{sample.output_text}}",
        "reference": "{{item.sound}}",
        "operation": "eq",
    },
    {
        "type": "text_similarity",
        "name": "close sound",
        "input": "{{sample.output_text}}",
        "reference": "{{item.sound}}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": 0.6,
    },
]
TEMPLATE = {"type": "template", "template": [{"role": "user", "content": "The {{item.animal}} says:"}]}
GREEDY = {"temperature": 0.0, "max_completion_tokens": 6}


def _client(service: Service, key: str) -> OpenAI:
    return OpenAI(base_url=f"{service.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def _keys(settings: Settings, *orgs: str) -> list[str]:
    with Session(make_engine(settings.resolved_database_url())) as s:
        return [create_key(s, org) for org in orgs]


@pytest.fixture(scope="module")
def evals_server(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[tuple[Service, str, str, str]]:
    """`ftserve api --with-inference` with a chat adapter that knows the animals' sounds; keys for two orgs."""
    data = tmp_path_factory.mktemp("evals")
    settings = Settings(data_dir=data, bases_dir=bases_dir)
    train_adapter(settings, "ftjob-evalsounds", SOUNDS, seed=1, epochs=12, chat=True)
    port = free_port()
    env = base_env(data, bases_dir, FTSERVE_BATCH_WINDOW_MS="50")
    proc = Proc([*FTSERVE, "api", "--with-inference", "--port", str(port)], env, data / "server.log")
    service = Service(f"http://127.0.0.1:{port}", [proc], env)
    try:
        wait_http(f"{service.base_url}/health", [proc])
        model = register(settings, "ftjob-evalsounds", "sounds")
        mine, other = _keys(settings, "personal", "other")
        yield service, mine, other, model
    finally:
        service.stop()


def _wait_run(client: OpenAI, eval_id: str, run_id: str, until: tuple[str, ...], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in until:
            return run
        time.sleep(0.2)
    raise TimeoutError(f"eval run {run_id} is still {run.status}")


def _items(client: OpenAI, eval_id: str, run_id: str) -> list[Any]:
    return list(client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=7))  # pages of 7: paging too


def _counts_from(items: list[Any], names: list[str]) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """What the run's counts must be, computed from its output items."""
    counts = {
        "total": len(items),
        **{
            s: sum(i.status == k for i in items)
            for s, k in (("passed", "pass"), ("failed", "fail"), ("errored", "error"))
        },
    }
    per = {
        name: (
            sum(1 for i in items for r in i.results if r.name == name and r.passed),
            sum(
                1 for i in items for r in i.results if r.name == name and not r.passed and not getattr(r, "error", None)
            ),
        )
        for name in names
    }
    return counts, per


def _errored(result: Any) -> bool:
    return bool((result.model_extra or {}).get("error"))


def _check_counts(client: OpenAI, run: Any, names: list[str]) -> list[Any]:
    items = _items(client, run.eval_id, run.id)
    counts, per = _counts_from(items, names)
    assert run.result_counts.model_dump() == counts
    assert {c.testing_criteria: (c.passed, c.failed) for c in run.per_testing_criteria_results} == per
    assert sorted(i.datasource_item_id for i in items) == list(range(len(items)))  # each item once
    return items


def test_base_and_fine_tuned_runs_are_graded(evals_server: tuple[Service, str, str, str], tmp_path: Path) -> None:
    service, key, _, ft_model = evals_server
    client = _client(service, key)
    ev = client.evals.create(
        name="sounds",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=CRITERIA,
        metadata={"task": "animals"},
    )
    assert ev.object == "eval" and ev.data_source_config.schema_["properties"]["item"] == ITEM_SCHEMA
    assert [c.name for c in ev.testing_criteria] == ["exact sound", "close sound"]
    rows = [{"item": {"animal": a, "sound": s}} for a, s in SOUNDS.items()]
    rows.insert(3, {"item": {"animal": "yak"}})  # no sound: fails the item_schema, errors alone
    path = tmp_path / "animals.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = client.files.create(file=path.open("rb"), purpose="evals")
    assert f.status == "processed"
    source = {"type": "file_id", "id": f.id}
    runs = {
        model: client.evals.runs.create(
            ev.id,
            name=model,
            data_source={
                "type": "completions",
                "model": model,
                "source": source,
                "input_messages": TEMPLATE,
                "sampling_params": GREEDY,
            },
        )
        for model in (BASE, ft_model)
    }
    for run in runs.values():
        assert run.status == "queued" and run.report_url == f"/dashboard/evals/{ev.id}?run={run.id}"
    names = [c["name"] for c in CRITERIA]
    done = {m: _wait_run(client, ev.id, r.id, ("completed", "failed")) for m, r in runs.items()}
    passed, answers = {}, {}
    for model, run in done.items():
        assert run.status == "completed", run.error
        items = _check_counts(client, run, names)
        assert len(items) == len(rows) and run.result_counts.errored >= 1
        bad = next(i for i in items if i.datasource_item_id == 3)
        assert bad.status == "error" and bad.results == [] and bad.sample.error is not None
        assert "line 4" in bad.sample.error.message and "sound" in bad.sample.error.message
        sampled = [i for i in items if i.status != "error"]
        assert all(i.sample.model == model and i.sample.output[0].content is not None for i in sampled)
        assert [(u.model_name, u.invocation_count) for u in run.per_model_usage] == [(model, len(rows) - 1)]
        assert run.per_model_usage[0].completion_tokens == sum(i.sample.usage.completion_tokens for i in sampled)
        passed[model] = run.result_counts.passed
        answers[model] = {i.datasource_item["animal"]: i.sample.output[0].content for i in sampled}
        one = client.evals.runs.output_items.retrieve(items[0].id, eval_id=ev.id, run_id=run.id)
        assert one.model_dump() == items[0].model_dump()
        fails = client.evals.runs.output_items.list(run.id, eval_id=ev.id, status="fail")
        assert all(i.status == "fail" for i in fails)
    assert passed[ft_model] > passed[BASE], passed  # the fine-tune learned the sounds; the base did not
    # ftserve's `model` filter (the dashboard's job page): the evals, and an eval's runs, that sampled given models.
    on_ft = client.evals.runs.list(ev.id, extra_query={"model": [ft_model]})
    assert [r.id for r in on_ft] == [runs[ft_model].id]
    assert len(client.evals.runs.list(ev.id, extra_query={"model": [ft_model, BASE]}).data) == 2
    assert ev.id in [e.id for e in client.evals.list(extra_query={"model": [ft_model]}, limit=100)]
    assert ev.id not in [e.id for e in client.evals.list(extra_query={"model": ["ft:none"]}, limit=100)]
    # Its report_url: a redirect to the dashboard's eval view with the run selected.
    report = httpx.get(f"{service.base_url}{runs[ft_model].report_url}", follow_redirects=False)
    assert report.status_code == 302
    assert report.headers["location"] == f"../../#/evals/{ev.id}?run={runs[ft_model].id}"
    # The same items through the Responses path (inline content): the same greedy answers as chat's.
    inline = {"type": "file_content", "content": rows[:3]}
    responses = client.evals.runs.create(
        ev.id,
        data_source={"type": "responses", "model": ft_model, "source": inline, "input_messages": TEMPLATE,
                     "sampling_params": GREEDY},
    )  # fmt: skip
    responses = _wait_run(client, ev.id, responses.id, ("completed", "failed"))
    assert responses.status == "completed" and responses.result_counts.total == 3
    got = {i.datasource_item["animal"]: i.sample.output[0].content for i in _check_counts(client, responses, names)}
    assert got == {a: answers[ft_model][a] for a in got}
    runs["responses"] = responses
    assert {r.id for r in client.evals.runs.list(ev.id)} == {r.id for r in runs.values()}
    renamed = client.evals.update(ev.id, name="animal sounds")
    assert renamed.name == "animal sounds" and client.evals.retrieve(ev.id).metadata == {"task": "animals"}


def test_a_python_criterion_that_raises_errors_only_its_items(evals_server: tuple[Service, str, str, str]) -> None:
    """A jsonl run (the samples are the lines'): where the python grader raises, its items error; the other
    criterion still grades them, and the other items pass or fail."""
    service, key, _, _ = evals_server
    client = _client(service, key)
    source = "def grade(sample, item):\n    if item['boom']:\n        raise ValueError('boom')\n    return 1.0\n"
    criteria = [
        CRITERIA[0],
        {"type": "python", "name": "no boom", "source": source, "pass_threshold": 0.5},
    ]
    schema = {"type": "object", "properties": {"sound": {"type": "string"}, "boom": {"type": "boolean"}}}
    ev = client.evals.create(
        data_source_config={"type": "custom", "item_schema": schema},
        testing_criteria=criteria,
    )
    content = [
        {"item": {"sound": "meow", "boom": False}, "sample": {"output_text": "meow"}},
        {"item": {"sound": "woof", "boom": True}, "sample": {"output_text": "woof"}},
        {"item": {"sound": "moo", "boom": False}, "sample": {"output_text": "baa"}},
        {"item": {"sound": "roar", "boom": True}, "sample": {"output_text": "tweet"}},
    ]
    run = client.evals.runs.create(
        ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}}
    )
    run = _wait_run(client, ev.id, run.id, ("completed", "failed"))
    assert run.status == "completed" and run.model is None
    items = {i.datasource_item_id: i for i in _check_counts(client, run, ["exact sound", "no boom"])}
    assert [items[i].status for i in range(4)] == ["pass", "error", "fail", "error"]
    for i in (1, 3):
        exact, python = items[i].results
        assert python.passed is False and python.error["code"] == "python_grader_runtime_error"
        assert "boom" in python.error["message"]
        assert exact.passed is (i == 1)  # graded as on any item
    assert run.result_counts.model_dump() == {"total": 4, "passed": 1, "failed": 1, "errored": 2}
    assert {c.testing_criteria: (c.passed, c.failed) for c in run.per_testing_criteria_results} == {
        "exact sound": (2, 2),
        "no boom": (2, 0),
    }
    assert run.per_model_usage == []


def test_a_label_model_criterion_judges_as_the_runs_org(evals_server: tuple[Service, str, str, str]) -> None:
    """A model grader's judge is the serving path over HTTP with a key made for the run's org (this server takes
    keys), revoked when the run ends; its calls show in per_model_usage beside the sampled model."""
    service, key, _, _ = evals_server
    client = _client(service, key)
    judge = {
        "type": "label_model",
        "name": "judge",
        "model": BASE,
        "input": [{"role": "user", "content": "Is '{{sample.output_text}}' the sound a {{item.animal}} makes?"}],
        "labels": ["yes", "no"],
        "passing_labels": ["yes"],
    }
    ev = client.evals.create(
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA}, testing_criteria=[judge]
    )
    content = [{"item": {"animal": a, "sound": s}} for a, s in list(SOUNDS.items())[:2]]
    run = client.evals.runs.create(
        ev.id,
        data_source={"type": "completions", "model": BASE, "input_messages": TEMPLATE, "sampling_params": GREEDY,
                     "source": {"type": "file_content", "content": content}},
    )  # fmt: skip
    run = _wait_run(client, ev.id, run.id, ("completed", "failed"))
    items = _check_counts(client, run, ["judge"])
    assert run.result_counts.errored == 0, [i.results for i in items]
    assert all(i.results[0].type == "label_model" for i in items)
    assert [(u.model_name, u.invocation_count) for u in run.per_model_usage] == [(BASE, 4)]  # 2 samples, 2 judgings
    assert _judge_keys_revoked(service, run.id) == [True]  # one key, made for the run and revoked at its end


def _judge_keys_revoked(service: Service, run_id: str) -> list[bool]:
    """Whether each key made for the run's judge is revoked (the key itself is never shown: its row tells)."""
    settings = Settings(data_dir=Path(service.env["FTSERVE_DATA_DIR"]))
    with Session(make_engine(settings.resolved_database_url())) as s:
        keys = s.scalars(select(ApiKey).where(ApiKey.name == f"judge for {run_id}"))
        return [k.revoked_at is not None for k in keys]


def test_what_cannot_run_is_a_400_naming_the_field(evals_server: tuple[Service, str, str, str], tmp_path: Path) -> None:
    service, key, _, _ = evals_server
    client = _client(service, key)
    custom = {"type": "custom", "item_schema": ITEM_SCHEMA}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"data_source_config": {"type": "logs"}, "testing_criteria": CRITERIA}, "data_source_config.type"),
        (
            {"data_source_config": {"type": "custom", "item_schema": {"type": 3}}, "testing_criteria": CRITERIA},
            "data_source_config.item_schema",
        ),
        (
            {"data_source_config": custom, "testing_criteria": [CRITERIA[0], {**CRITERIA[1], "input": "{{nope}}"}]},
            "testing_criteria[1].input",
        ),
        (
            {
                "data_source_config": custom,
                "testing_criteria": [{k: v for k, v in CRITERIA[1].items() if k != "pass_threshold"}],
            },
            "testing_criteria[0].pass_threshold",
        ),
    ]
    for body, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.evals.create(**body)
        assert err.value.param == param, err.value.message
    ev = client.evals.create(data_source_config=custom, testing_criteria=CRITERIA)
    content = {"type": "file_content", "content": [{"item": {"animal": "cat", "sound": "meow"}}]}
    sampled = {"type": "completions", "model": BASE, "source": content, "input_messages": TEMPLATE}
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n" for i in range(10)))
    tuning = client.files.create(file=path.open("rb"), purpose="fine-tune")
    sample_tag = "{{sample.output_text}}"
    runs: list[tuple[dict[str, Any], str, type[Exception]]] = [
        (
            {
                "type": "completions",
                "source": {"type": "stored_completions"},
                "model": BASE,
                "input_messages": TEMPLATE,
            },
            "data_source.source.type",
            openai.BadRequestError,
        ),
        ({**sampled, "model": "ft:nope:personal::x"}, "data_source.model", openai.NotFoundError),
        (
            {k: v for k, v in sampled.items() if k != "input_messages"},
            "data_source.input_messages",
            openai.BadRequestError,
        ),
        (
            {**sampled, "input_messages": {"type": "template", "template": [{"role": "user", "content": sample_tag}]}},
            "data_source.input_messages.template[0].content",
            openai.BadRequestError,
        ),
        (
            {**sampled, "sampling_params": {"temperature": 7}},
            "data_source.sampling_params.temperature",
            openai.BadRequestError,
        ),
        (
            {"type": "jsonl", "source": {"type": "file_id", "id": tuning.id}},
            "data_source.source.id",
            openai.BadRequestError,
        ),
    ]
    for data_source, param, error in runs:
        with pytest.raises(error) as caught:
            client.evals.runs.create(ev.id, data_source=data_source)
        assert caught.value.param == param, caught.value.message


def test_cancel_delete_and_tenancy(evals_server: tuple[Service, str, str, str]) -> None:
    service, key, other_key, _ = evals_server
    client, other = _client(service, key), _client(service, other_key)
    ev = client.evals.create(
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
        testing_criteria=CRITERIA,
    )
    n = 400
    content = [{"item": {"animal": f"animal number {i}", "sound": "x"}} for i in range(n)]
    run = client.evals.runs.create(
        ev.id,
        data_source={
            "type": "completions",
            "model": BASE,
            "input_messages": TEMPLATE,
            "source": {"type": "file_content", "content": content},
            "sampling_params": {"temperature": 1.0, "seed": 1, "max_completion_tokens": 48},
        },
    )
    _wait_run(client, ev.id, run.id, ("in_progress", "completed"))
    canceled = client.evals.runs.cancel(run.id, eval_id=ev.id)
    assert canceled.status == "canceled"
    assert canceled.result_counts.total < n
    with pytest.raises(openai.BadRequestError) as err:  # a finished run cannot be canceled
        client.evals.runs.cancel(
            _wait_run(
                client,
                ev.id,
                client.evals.runs.create(
                    ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content[:1]}}
                ).id,
                ("completed",),
            ).id,
            eval_id=ev.id,
        )
    assert err.value.code == "run_not_cancelable"

    # Another org sees none of it: every read and write is the 404 of a missing object.
    assert ev.id not in {e.id for e in other.evals.list()}
    for call in (
        lambda: other.evals.retrieve(ev.id),
        lambda: other.evals.update(ev.id, name="mine now"),
        lambda: other.evals.delete(ev.id),
        lambda: other.evals.runs.list(ev.id),
        lambda: other.evals.runs.retrieve(run.id, eval_id=ev.id),
        lambda: other.evals.runs.cancel(run.id, eval_id=ev.id),
        lambda: other.evals.runs.output_items.list(run.id, eval_id=ev.id),
        lambda: other.evals.runs.create(
            ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content[:1]}}
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()

    deleted = client.evals.runs.delete(run.id, eval_id=ev.id)
    assert deleted.deleted and deleted.run_id == run.id
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(run.id, eval_id=ev.id)
    assert client.evals.delete(ev.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(ev.id)


def _graded_here(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "ftserve_eval_items_total"
    )


def test_a_run_survives_sigkill_of_the_inference_role(tmp_path: Path, bases_dir: Path, postgres_url: str) -> None:
    """`ftserve api` and `ftserve inference` apart on Postgres: the inference role is killed mid-run, a new one
    resumes the run (its lease expired) and completes it with every item graded once, none of those recorded
    before the kill graded again."""
    # A short lease, so the new process takes the run over soon; small batches, so items finish (and are recorded)
    # a few at a time and the kill lands mid-run.
    fast = {"FTSERVE_EVAL_LEASE_SECONDS": "2", "FTSERVE_MAX_BATCH_ROWS": "8"}
    env = base_env(tmp_path, bases_dir, FTSERVE_DATABASE_URL=postgres_url, **fast)
    api_port, inf_port = free_port(), free_port()
    api_env = {**env, "FTSERVE_INFERENCE_URL": f"http://127.0.0.1:{inf_port}"}
    api = Proc([*FTSERVE, "api", "--port", str(api_port)], api_env, tmp_path / "api.log")
    service = Service(f"http://127.0.0.1:{api_port}", [api], env)
    try:
        wait_http(f"{service.base_url}/health", [api])  # the api role migrates the database first
        inference = Proc([*FTSERVE, "inference", "--port", str(inf_port)], env, tmp_path / "inference.log")
        service.procs.append(inference)
        wait_http(f"http://127.0.0.1:{inf_port}/health", [inference])
        client = _client(service, "anything")
        ev = client.evals.create(
            data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
            testing_criteria=CRITERIA,
        )
        # Many more items than one recorded group (64): the kill lands while most are still to run, even on a
        # loaded machine where the first group records late.
        n = 192
        content = [{"item": {"animal": f"animal number {i}", "sound": "x"}} for i in range(n)]
        run = client.evals.runs.create(
            ev.id,
            data_source={
                "type": "completions",
                "model": BASE,
                "input_messages": TEMPLATE,
                "source": {"type": "file_content", "content": content},
                "sampling_params": {"temperature": 1.0, "seed": 2, "max_completion_tokens": 16},
            },
        )
        seen, deadline = 0, time.monotonic() + 300
        while seen == 0 and time.monotonic() < deadline:
            seen = client.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.total
            time.sleep(0.05)
        assert seen < n
        inference.stop(signal.SIGKILL)
        again = Proc([*FTSERVE, "inference", "--port", str(inf_port)], env, tmp_path / "inference2.log")
        service.procs.append(again)
        wait_http(f"http://127.0.0.1:{inf_port}/health", [again])
        done = _wait_run(client, ev.id, run.id, ("completed", "failed"), timeout=600)
        assert done.status == "completed" and done.result_counts.total == n
        items = _check_counts(client, done, [c["name"] for c in CRITERIA])
        assert len({i.id for i in items}) == n
        assert 0 < _graded_here(f"http://127.0.0.1:{inf_port}") <= n - seen
    finally:
        service.stop()
