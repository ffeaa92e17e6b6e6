"""The official openai client works unchanged: every call, with bodies validated against the SDK's types."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import Completion, FileDeleted, FileObject, Model, ModelDeleted
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from tests.e2e.conftest import ANIMALS, animal_prompt, client_for, wait_job, write_prompt_completion
from tests.servers import Service


@pytest.fixture(scope="module")
def client(embedded: Service) -> OpenAI:
    return client_for(embedded)


@pytest.fixture(scope="module")
def train_file(client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> FileObject:
    path = write_prompt_completion(tmp_path_factory.mktemp("data") / "train.jsonl")
    return client.files.create(file=path.open("rb"), purpose="fine-tune")


@pytest.fixture(scope="module")
def trained(client: OpenAI, train_file: FileObject) -> FineTuningJob:
    """One finished job (15 epochs × 3 steps; the newest 3 epoch checkpoints kept) for the read-only tests."""
    job = client.fine_tuning.jobs.create(
        training_file=train_file.id,
        validation_file=train_file.id,
        model="ftserve-tiny",
        suffix="fid",
        seed=3,
        metadata={"team": "fidelity"},
        hyperparameters={"n_epochs": 15, "batch_size": 4},
    )
    job, _ = wait_job(client, job.id)
    assert job.status == "succeeded", job.error
    return job


def _raw(client: OpenAI, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{client.base_url}{path.lstrip('/')}", timeout=60, **kw)


@pytest.mark.storage
def test_file_lifecycle_matches_sdk_types(client: OpenAI, tmp_path: Path) -> None:
    path = write_prompt_completion(tmp_path / "t.jsonl")
    created = client.files.with_raw_response.create(file=path.open("rb"), purpose="fine-tune")
    body = json.loads(created.text)
    FileObject.model_validate(body)
    assert body["object"] == "file" and body["bytes"] == path.stat().st_size and body["filename"] == "t.jsonl"
    assert created.headers["x-request-id"]
    file_id = body["id"]
    assert client.files.retrieve(file_id).status == "processed"
    assert client.files.content(file_id).content == path.read_bytes()
    listed = [f.id for f in client.files.list(purpose="fine-tune")]
    assert file_id in listed
    deleted = client.files.delete(file_id)
    FileDeleted.model_validate(deleted.model_dump())
    assert deleted.deleted and deleted.id == file_id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_file_pagination_across_pages(client: OpenAI, tmp_path: Path) -> None:
    path = write_prompt_completion(tmp_path / "p.jsonl")
    made = {client.files.create(file=(f"p{i}.jsonl", path.read_bytes()), purpose="fine-tune").id for i in range(26)}
    everything = [f.id for f in client.files.list(limit=10_000)]
    # The SDK's auto-pagination follows `after` cursors page by page.
    paged = [f.id for f in client.files.list(limit=7)]
    assert paged == everything and made <= set(paged)
    first = client.files.list(limit=7)
    assert len(first.data) == 7 and first.has_more
    ascending = [f.id for f in client.files.list(limit=10_000, order="asc")]
    assert ascending == list(reversed(everything))


@pytest.mark.storage
def test_job_object_events_checkpoints_match_sdk(client: OpenAI, trained: FineTuningJob) -> None:
    raw = _raw(client, "GET", f"/fine_tuning/jobs/{trained.id}").json()
    FineTuningJob.model_validate(raw)
    assert set(FineTuningJob.model_fields) <= set(raw)
    assert raw["metadata"] == {"team": "fidelity"} and raw["method"]["type"] == "supervised"
    assert raw["result_files"] and raw["trained_tokens"] > 0 and raw["finished_at"] >= raw["created_at"]
    events = _raw(client, "GET", f"/fine_tuning/jobs/{trained.id}/events", params={"limit": 100}).json()
    for e in events["data"]:
        FineTuningJobEvent.model_validate(e)
    metrics = [e for e in events["data"] if e["type"] == "metrics"]
    assert {"step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"} <= set(
        metrics[0]["data"]
    )
    ckpts = _raw(client, "GET", f"/fine_tuning/jobs/{trained.id}/checkpoints").json()
    assert len(ckpts["data"]) == 3
    for c in ckpts["data"]:
        FineTuningJobCheckpoint.model_validate(c)
        assert c["id"].startswith("ftckpt-")
        assert c["fine_tuned_model_checkpoint"] == f"{trained.fine_tuned_model}:ckpt-step-{c['step_number']}"
        assert c["metrics"]["full_valid_loss"] is not None
    csv = client.files.content(raw["result_files"][0]).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(csv) == 1 + 45


def test_event_and_job_pagination(client: OpenAI, train_file: FileObject, trained: FineTuningJob) -> None:
    events = [e.id for e in client.fine_tuning.jobs.list_events(trained.id, limit=100)]
    paged = [e.id for e in client.fine_tuning.jobs.list_events(trained.id, limit=4)]
    assert paged == events and len(events) > 12
    # 25 more jobs, cancelled while queued so the worker has nothing to train.
    for _ in range(25):
        job = client.fine_tuning.jobs.create(
            training_file=train_file.id, model="ftserve-tiny", metadata={"batch": "pagination"}
        )
        client.fine_tuning.jobs.cancel(job.id)
    everything = [j.id for j in client.fine_tuning.jobs.list(limit=100)]
    paged_jobs = [j.id for j in client.fine_tuning.jobs.list(limit=6)]
    assert paged_jobs == everything and len(everything) >= 26
    page = client.fine_tuning.jobs.list(limit=6)
    assert page.has_more and len(page.data) == 6
    tagged = list(client.fine_tuning.jobs.list(limit=100, metadata={"batch": "pagination"}))
    assert len(tagged) == 25 and all(j.status == "cancelled" for j in tagged)


def test_hyperparameters_in_method_block(client: OpenAI, train_file: FileObject) -> None:
    job = client.fine_tuning.jobs.create(
        training_file=train_file.id,
        model="ftserve-tiny",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 3}}},
    )
    client.fine_tuning.jobs.cancel(job.id)
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 3
    assert job.method is not None and job.method.type == "supervised"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(training_file=train_file.id, model="ftserve-tiny", suffix="x" * 65)
    assert err.value.param == "suffix"


def test_idempotency_key_returns_the_first_result(client: OpenAI, train_file: FileObject, tmp_path: Path) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.fine_tuning.jobs.create(training_file=train_file.id, model="ftserve-tiny", extra_headers=key)
    again = client.fine_tuning.jobs.create(training_file=train_file.id, model="ftserve-tiny", extra_headers=key)
    client.fine_tuning.jobs.cancel(first.id)
    assert again.id == first.id
    path = write_prompt_completion(tmp_path / "i.jsonl")
    fkey = {"Idempotency-Key": str(uuid.uuid4())}
    f1 = client.files.create(file=path.open("rb"), purpose="fine-tune", extra_headers=fkey)
    f2 = client.files.create(file=path.open("rb"), purpose="fine-tune", extra_headers=fkey)
    assert f1.id == f2.id
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.create(training_file=train_file.id, model="ftserve-tiny", extra_headers=fkey)


def test_pause_resume_and_cancel(client: OpenAI, train_file: FileObject) -> None:
    job = client.fine_tuning.jobs.create(
        training_file=train_file.id, model="ftserve-tiny", hyperparameters={"n_epochs": 2}
    )
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.cancel(job.id)
    assert err.value.code == "job_not_cancellable"


@pytest.mark.storage
def test_models_list_retrieve_delete(client: OpenAI, trained: FineTuningJob, tmp_path: Path) -> None:
    listed = client.models.list()
    ids = [m.id for m in listed]
    for m in listed:
        Model.model_validate(m.model_dump())
    assert {"ftserve-tiny", "smollm2-135m-instruct", trained.fine_tuned_model} <= set(ids)
    ckpt = f"{trained.fine_tuned_model}:ckpt-step-42"
    assert ckpt in ids and client.models.retrieve(ckpt).id == ckpt
    assert client.completions.create(model=ckpt, prompt=animal_prompt("cat"), max_tokens=4).choices

    archive = httpx.get(f"{client.base_url}models/{trained.fine_tuned_model}/adapter", timeout=30)
    assert archive.status_code == 200
    names = set(zipfile.ZipFile(io.BytesIO(archive.content)).namelist())
    assert names == {"adapter_config.json", "adapter_model.safetensors"}

    deleted = client.models.delete(ckpt)
    ModelDeleted.model_validate(deleted.model_dump())
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=ckpt, prompt="x")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(ckpt)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("ftserve-tiny")


def test_completion_parameters(client: OpenAI, trained: FineTuningJob) -> None:
    model = trained.fine_tuned_model or ""
    prompts = [animal_prompt(a) for a, _ in ANIMALS[:2]]
    raw = client.completions.with_raw_response.create(model=model, prompt=prompts, n=2, temperature=0, max_tokens=6)
    Completion.model_validate(json.loads(raw.text))
    out = raw.parse()
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text == out.choices[1].text == f" {ANIMALS[0][1]}"
    assert out.usage is not None and out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens

    a = client.completions.create(model="ftserve-tiny", prompt="The", seed=42, temperature=1.0, max_tokens=8)
    b = client.completions.create(model="ftserve-tiny", prompt="The", seed=42, temperature=1.0, max_tokens=8)
    assert a.choices[0].text == b.choices[0].text

    stopped = client.completions.create(model=model, prompt=prompts[0], temperature=0, stop=["eo"], max_tokens=6)
    assert stopped.choices[0].text == " m" and stopped.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="x", stop=["a", "b", "c", "d", "e"])

    echoed = client.completions.create(model=model, prompt=prompts[0], temperature=0, echo=True, max_tokens=6)
    assert echoed.choices[0].text == prompts[0] + f" {ANIMALS[0][1]}"

    lp = client.completions.create(model=model, prompt=prompts[0], temperature=0, logprobs=2, max_tokens=6)
    logprobs = lp.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    # The end-of-text token that stopped the choice is listed last (as OpenAI does), though not in the text.
    assert lp.choices[0].finish_reason == "stop" and logprobs.tokens[-1] == "<|endoftext|>"
    assert "".join(logprobs.tokens[:-1]) == lp.choices[0].text
    assert all(len(t) == 2 for t in logprobs.top_logprobs)


def test_streaming_completions_and_chat(client: OpenAI, trained: FineTuningJob) -> None:
    model = trained.fine_tuned_model or ""
    chunks = list(
        client.completions.create(model=model, prompt=animal_prompt("dog"), temperature=0, max_tokens=6, stream=True)
    )
    # Intermediate chunks carry finish_reason null, as OpenAI's own streams do; the last one is a full Completion.
    Completion.model_validate(chunks[-1].model_dump())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " woof"
    assert chunks[-1].choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(
        model="ftserve-tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts = list(stream)
    assert parts[0].choices[0].delta.role == "assistant"
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens <= 5
    whole = client.chat.completions.with_raw_response.create(
        model="ftserve-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    ChatCompletion.model_validate(json.loads(whole.text))


def test_error_envelope_status_codes_and_request_ids(client: OpenAI) -> None:
    missing = _raw(client, "POST", "/fine_tuning/jobs", json={"training_file": "file-x"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model" and missing.json()["error"]["type"] == "invalid_request_error"
    assert missing.headers["x-request-id"]
    not_json = _raw(client, "POST", "/fine_tuning/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and set(not_json.json()["error"]) == {"message", "type", "param", "code"}
    unknown = _raw(client, "GET", "/no/such/route")
    assert unknown.status_code == 404 and "error" in unknown.json()
    with pytest.raises(openai.NotFoundError) as err:
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    assert err.value.response.headers["x-request-id"]
    # A caller's own request id comes back, on successes and on streamed responses alike.
    mine = _raw(client, "GET", "/models", headers={"x-request-id": "req-from-client"})
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "req-from-client"
    body = {"model": "ftserve-tiny", "prompt": "x", "max_tokens": 2, "stream": True}
    streamed = _raw(client, "POST", "/completions", json=body, headers={"x-request-id": "req-stream"})
    assert streamed.headers["x-request-id"] == "req-stream" and streamed.text.rstrip().endswith("data: [DONE]")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="ftserve-tiny", prompt="x", temperature=5)


def test_errors_quote_little_list_every_allowed_method_and_take_an_empty_cursor(
    client: OpenAI, trained: FineTuningJob
) -> None:
    huge = "file-" + "x" * 20_000_000  # a 20 MB id is not echoed back in a 20 MB error
    answer = _raw(client, "POST", "/fine_tuning/jobs", json={"model": "ftserve-tiny", "training_file": huge})
    assert answer.status_code in (400, 404) and len(answer.content) < 5000, len(answer.content)
    assert "20000005 characters" in answer.json()["error"]["message"]
    allows = [("/files", "GET, POST"), ("/files/file-x", "DELETE, GET"), ("/fine_tuning/jobs", "GET, POST")]
    for path, allowed in allows:
        refused = _raw(client, "PUT", path)
        assert refused.status_code == 405 and refused.headers["allow"] == allowed, (path, refused.headers)
    base = _raw(client, "DELETE", "/models/ftserve-tiny")
    assert base.status_code == 403 and base.json()["error"]["code"] == "model_not_deletable"
    assert "403" in _raw(client, "GET", "/../openapi.json").json()["paths"]["/v1/models/{model}"]["delete"]["responses"]
    for path in ("/files?after=", "/fine_tuning/jobs?after=", f"/fine_tuning/jobs/{trained.id}/events?after="):
        first_page = _raw(client, "GET", path)
        assert first_page.status_code == 200 and first_page.json()["data"], (path, first_page.text)


def test_openapi_documents_errors_not_422(client: OpenAI) -> None:
    schema = _raw(client, "GET", "/../openapi.json").json()
    create = schema["paths"]["/v1/fine_tuning/jobs"]["post"]["responses"]
    assert {"200", "400", "404"} <= set(create) and "422" not in create
    assert "/v1/fine_tuning/jobs/{job_id}/pause" in schema["paths"]
    assert "/v1/models/{model}/adapter" in schema["paths"]


@pytest.fixture()
def small_upload_service(tmp_path: Path, bases_dir: Path) -> Iterator[Service]:
    from tests.servers import start_embedded

    service = start_embedded(tmp_path, bases_dir, FTSERVE_MAX_UPLOAD_BYTES="200000")
    yield service
    service.stop()


@pytest.mark.storage
def test_oversized_upload_is_413_while_streaming(small_upload_service: Service) -> None:
    client = client_for(small_upload_service)
    big = b'{"prompt": "a", "completion": "b"}\n' * 20_000  # ~700 kB
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("big.jsonl", big), purpose="fine-tune")
    assert err.value.status_code == 413
    assert err.value.code == "file_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the cap must hold while the body streams
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        for _ in range(40):
            yield big[:20_000]
        yield b"\r\n--xyz--\r\n"

    resp = httpx.post(
        f"{small_upload_service.base_url}/v1/files",
        content=chunked(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
        timeout=30,
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "file_too_large"


@pytest.mark.storage
def test_a_100_mb_upload_streams_in_bounded_memory(embedded: Service) -> None:
    import psutil

    line = json.dumps({"prompt": "The quick brown fox " * 10, "completion": " jumps over the lazy dog " * 10}) + "\n"
    lines = 100 * 1024 * 1024 // len(line) + 1
    server = psutil.Process(embedded.procs[0].proc.pid)
    before = server.memory_info().rss

    def body() -> Iterator[bytes]:
        yield b'--b0undary\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        yield b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        chunk = line.encode() * 1000
        for _ in range(lines // 1000):
            yield chunk
        yield line.encode() * (lines % 1000)
        yield b"\r\n--b0undary--\r\n"

    r = httpx.post(
        f"{embedded.base_url}/v1/files",
        content=body(),
        timeout=600,
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert r.status_code == 200, r.text
    uploaded = FileObject.model_validate(r.json())
    assert uploaded.status == "processed" and uploaded.bytes == lines * len(line) >= 100 * 1024 * 1024
    grown = server.memory_info().rss - before
    assert grown < 60 * 1024 * 1024, f"server RSS grew by {grown >> 20} MiB for a 100 MiB upload"


@pytest.mark.local_storage  # looks at the data dir's files
def test_a_file_corrupted_after_upload_fails_the_job_with_its_code(
    client: OpenAI, embedded: Service, tmp_path: Path
) -> None:
    f = client.files.create(file=write_prompt_completion(tmp_path / "c.jsonl").open("rb"), purpose="fine-tune")
    stored = Path(embedded.env["FTSERVE_DATA_DIR"]) / "files" / f"{f.id}.jsonl"
    stored.write_bytes(stored.read_bytes() + b"{broken\n")  # revalidated when the job starts
    job = client.fine_tuning.jobs.create(training_file=f.id, model="ftserve-tiny")
    failed, _ = wait_job(client, job.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert "line 13" in failed.error.message
