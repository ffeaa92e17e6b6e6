"""The Batch API end to end with the official client: line-by-line validation of batch files, a batch run
through the inference engine, its output and error files in OpenAI's shapes, cancel, and a server killed in
the middle of a batch and started again on the same data dir."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import Batch
from openai.types.responses import Response
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import client_for
from tests.servers import Service, start_embedded

BASE = "ftserve-tiny"
ANIMALS = ["cat", "dog", "cow", "sheep", "lion", "bird", "horse", "fish", "bear", "tiger", "owl", "duck"]


def _line(custom_id: str, body: dict[str, Any], url: str = "/v1/completions") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _upload(client: OpenAI, path: Path, lines: list[dict[str, Any]] | list[str]) -> Any:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return client.files.create(file=path.open("rb"), purpose="batch")


def _wait(client: OpenAI, batch_id: str, until: tuple[str, ...], timeout: float = 300) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} is still {batch.status}")


def _jsonl(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


@pytest.fixture(scope="module")
def client(embedded: Service) -> OpenAI:
    return client_for(embedded)


@pytest.mark.parametrize(
    ("lines", "code", "line"),
    [
        (["{not json"], "invalid_json", 1),
        ([_line("a", {"model": BASE, "prompt": "x"}), {"method": "POST", "url": "/v1/completions", "body": {}}],
         "missing_key", 2),
        ([_line("a", {"model": BASE, "prompt": "x"}), _line("a", {"model": BASE, "prompt": "y"})],
         "duplicate_custom_id", 2),
        ([{**_line("a", {"model": BASE, "prompt": "x"}), "method": "GET"}], "invalid_method", 1),
        ([_line("a", {"model": BASE, "input": "x"}, url="/v1/embeddings")], "invalid_url", 1),
        ([_line("a", {"model": BASE, "prompt": "x"}), _line("b", {"model": BASE, "prompt": "x", "n": 0})],
         "invalid_body", 2),
        ([_line("a", {"prompt": "x"})], "invalid_body", 1),
        ([_line("a", {"model": BASE, "prompt": "x", "stream": True})], "invalid_body", 1),
        ([_line("a", {"model": BASE, "prompt": "x"}),
          _line("b", {"model": BASE, "messages": [{"role": "user", "content": "x"}]}, url="/v1/chat/completions")],
         "mixed_urls", 2),
        ([_line("a", {"model": BASE, "messages": []}, url="/v1/chat/completions")], "invalid_body", 1),
        ([_line("a", {"model": BASE, "input": "x", "stream": True}, url="/v1/responses")], "invalid_body", 1),
        ([], "empty_file", 1),
    ],
)  # fmt: skip
def test_a_bad_batch_file_is_a_400_naming_code_and_line(
    client: OpenAI, tmp_path: Path, lines: list[Any], code: str, line: int
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _upload(client, tmp_path / "bad.jsonl", lines)
    assert err.value.code == code and f"line {line}" in err.value.message, err.value.message
    rejected = client.files.list(purpose="batch").data[0]
    assert rejected.status == "error"


@pytest.mark.storage
def test_a_batch_runs_with_the_official_client(client: OpenAI, tmp_path: Path) -> None:
    bodies = {
        f"req-{a}": {"model": BASE, "prompt": f"The {a} says:", "max_tokens": 8, "temperature": 0} for a in ANIMALS
    }
    bodies["req-n2"] = {"model": BASE, "prompt": "The", "max_tokens": 5, "n": 2, "temperature": 0, "logprobs": 1}
    bodies["req-missing-model"] = {"model": "ft:nope:personal::x", "prompt": "The", "max_tokens": 2}
    bodies["req-too-long"] = {"model": BASE, "prompt": "The", "max_tokens": 100000}
    f = _upload(client, tmp_path / "in.jsonl", [_line(cid, body) for cid, body in bodies.items()])
    assert f.purpose == "batch" and f.status == "processed"
    with pytest.raises(openai.BadRequestError) as err:  # the file's requests are for /v1/completions
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.param == "endpoint"
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/completions", completion_window="24h", metadata={"eval": "animals"}
    )
    assert batch.status == "validating" and batch.metadata == {"eval": "animals"} and batch.expires_at
    assert batch.id in [b.id for b in client.batches.list().data]
    done = _wait(client, batch.id, ("completed", "failed"))
    Batch.model_validate(done.model_dump())
    assert done.status == "completed" and done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (15, 13, 2)
    outputs, errors = _jsonl(client, done.output_file_id), _jsonl(client, done.error_file_id)
    assert sorted(o["custom_id"] for o in outputs + errors) == sorted(bodies)
    # Each answer is what the same request gets over HTTP.
    for out in outputs:
        assert out["id"].startswith("batch_req_") and out["error"] is None
        assert out["response"]["status_code"] == 200 and out["response"]["request_id"]
        over_http = client.completions.create(**bodies[out["custom_id"]])
        got = out["response"]["body"]
        assert [c["text"] for c in got["choices"]] == [c.text for c in over_http.choices]
        assert got["object"] == "text_completion" and got["usage"] == over_http.usage.model_dump(exclude_none=True)  # type: ignore[union-attr]
    n2 = next(o for o in outputs if o["custom_id"] == "req-n2")["response"]["body"]
    assert len(n2["choices"]) == 2 and n2["choices"][0]["logprobs"]["tokens"]
    by_id = {e["custom_id"]: e["response"] for e in errors}
    assert by_id["req-missing-model"]["status_code"] == 404
    assert by_id["req-missing-model"]["body"]["error"]["code"] == "model_not_found"
    assert by_id["req-too-long"]["status_code"] == 400 and "100000" in by_id["req-too-long"]["body"]["error"]["message"]
    assert client.files.retrieve(done.output_file_id or "").purpose == "batch_output"

    chat = [
        _line(f"c{i}", {"model": BASE, "messages": [{"role": "user", "content": f"Name a {a}."}], "max_tokens": 6,
                         "temperature": 0}, url="/v1/chat/completions")
        for i, a in enumerate(ANIMALS[:4])
    ]  # fmt: skip
    cf = _upload(client, tmp_path / "chat.jsonl", chat)
    cb = _wait(client, client.batches.create(input_file_id=cf.id, endpoint="/v1/chat/completions",
                                             completion_window="24h").id, ("completed", "failed"))  # fmt: skip
    assert cb.status == "completed" and cb.error_file_id is None
    for out in _jsonl(client, cb.output_file_id):
        over_http = client.chat.completions.create(
            **next(c["body"] for c in chat if c["custom_id"] == out["custom_id"])
        )
        assert out["response"]["body"]["choices"][0]["message"]["content"] == over_http.choices[0].message.content


def test_a_responses_batch_runs_and_stores_its_responses(client: OpenAI, tmp_path: Path) -> None:
    """/v1/responses through the Batch API: each line's body is the Response the same request gets over HTTP,
    stored (retrievable, continuable) unless the line says store false; previous_response_id reads the store."""
    earlier = client.responses.create(model=BASE, input="Name a cat.", max_output_tokens=4, temperature=0)
    greedy = {"model": BASE, "max_output_tokens": 6, "temperature": 0}
    bodies: dict[str, dict[str, Any]] = {
        "text": {**greedy, "input": "Name a dog."},
        "items": {**greedy, "instructions": "Be brief.", "input": [{"role": "user", "content": "Name a cow."}]},
        "continued": {**greedy, "input": "And a bird?", "previous_response_id": earlier.id},
        "unstored": {**greedy, "input": "Name an owl.", "store": False},
        "no-previous": {**greedy, "input": "x", "previous_response_id": "resp_nope"},
        "hosted-tool": {**greedy, "input": "x", "tools": [{"type": "web_search"}]},
    }
    f = _upload(client, tmp_path / "responses.jsonl", [_line(c, b, url="/v1/responses") for c, b in bodies.items()])
    with pytest.raises(openai.BadRequestError) as err:  # the file's lines call /v1/responses
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.code == "endpoint_mismatch"
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    done = _wait(client, batch.id, ("completed", "failed"))
    assert done.status == "completed" and done.endpoint == "/v1/responses" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (4, 2)
    outputs = {o["custom_id"]: o["response"]["body"] for o in _jsonl(client, done.output_file_id)}
    errors = {e["custom_id"]: e["response"] for e in _jsonl(client, done.error_file_id)}
    for cid, body in outputs.items():
        over_http = client.responses.create(**bodies[cid])
        assert body["object"] == "response" and body["id"].startswith("resp_") and body["status"] == "incomplete"
        assert body["output"][0]["content"][0]["text"] == over_http.output_text
        assert body["usage"] == over_http.usage.model_dump(exclude_none=True)  # type: ignore[union-attr]
    # Stored as over HTTP: retrievable with its input items, and the start of a conversation.
    stored = client.responses.retrieve(outputs["items"]["id"])
    assert stored.model_dump(exclude_none=True) == Response.model_validate(outputs["items"]).model_dump(
        exclude_none=True
    )
    assert [i.content[0].text for i in client.responses.input_items.list(stored.id).data] == ["Name a cow."]  # type: ignore[union-attr]
    assert outputs["continued"]["previous_response_id"] == earlier.id
    follow = client.responses.create(model=BASE, input="More?", previous_response_id=stored.id, max_output_tokens=1)
    assert follow.usage and stored.usage and follow.usage.input_tokens > stored.usage.input_tokens
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(outputs["unstored"]["id"])
    assert errors["no-previous"]["status_code"] == 404
    assert errors["no-previous"]["body"]["error"]["param"] == "previous_response_id"
    assert errors["hosted-tool"]["status_code"] == 400
    assert errors["hosted-tool"]["body"]["error"]["code"] == "unsupported_tool"


def _long_lines(n: int, tokens: int) -> list[dict[str, Any]]:
    """Requests that each run `tokens` tokens (end of text is banned), so a batch takes a while."""
    ban = {str(t): -100 for t in range(4)}  # the tiny base's special tokens
    return [
        _line(f"r{i}", {"model": BASE, "prompt": f"The {ANIMALS[i % 12]} number {i}", "max_tokens": tokens,
                        "temperature": 1.0, "seed": i, "logit_bias": ban})
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.storage
def test_cancel_stops_a_batch_and_keeps_what_finished(client: OpenAI, tmp_path: Path) -> None:
    f = _upload(client, tmp_path / "long.jsonl", _long_lines(600, 48))
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    _wait(client, batch.id, ("in_progress",))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = _wait(client, batch.id, ("cancelled",))
    outputs, errors = _jsonl(client, done.output_file_id), _jsonl(client, done.error_file_id)
    assert done.request_counts is not None and len(outputs) == done.request_counts.completed < 600
    assert sorted(o["custom_id"] for o in outputs + errors) == sorted(f"r{i}" for i in range(600))
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(_wait(client, client.batches.create(
            input_file_id=_upload(client, tmp_path / "one.jsonl", _long_lines(1, 2)).id, endpoint="/v1/completions",
            completion_window="24h").id, ("completed",)).id)  # fmt: skip


def _batch_requests_run(service: Service) -> float:
    text = httpx.get(f"{service.base_url}/metrics", timeout=10).text
    return sum(
        s.value for fam in text_string_to_metric_families(text) for s in fam.samples
        if s.name == "ftserve_batch_requests_total"
    )  # fmt: skip


@pytest.mark.storage
def test_a_batch_survives_a_killed_server(tmp_path: Path, bases_dir: Path) -> None:
    """SIGKILL in the middle of a batch, start again on the same data dir: it completes, every request exactly
    once, and the new process runs none of the requests recorded before the kill."""
    data = tmp_path / "data"
    data.mkdir()
    service = start_embedded(data, bases_dir, FTSERVE_BATCH_LEASE_SECONDS="2")
    try:
        client = client_for(service)
        total = 800
        f = _upload(client, tmp_path / "long.jsonl", _long_lines(total, 32))
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
        seen = 0
        while seen == 0:
            counts = client.batches.retrieve(batch.id).request_counts
            seen = counts.completed if counts else 0
            time.sleep(0.05)
        assert seen < total
        for p in service.procs:
            p.stop(signal.SIGKILL)
    finally:
        service.stop()
    service = start_embedded(data, bases_dir, FTSERVE_BATCH_LEASE_SECONDS="2")
    try:
        client = client_for(service)
        done = _wait(client, batch.id, ("completed", "failed"), timeout=600)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (total, 0)
        outputs = _jsonl(client, done.output_file_id)
        assert sorted(o["custom_id"] for o in outputs) == sorted(f"r{i}" for i in range(total))  # each once
        assert all(len(o["response"]["body"]["choices"][0]["text"]) > 0 for o in outputs)
        assert 0 < _batch_requests_run(service) <= total - seen  # recorded requests were not run again
    finally:
        service.stop()
