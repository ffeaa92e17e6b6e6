"""The Uploads API (/v1/uploads) through the real openai client against a real server: a file over the
single-request cap goes in parts with `client.uploads.upload_file_chunked` and trains; every refusal is a 4xx
in OpenAI's envelope naming its code, parameter and reason."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import client_for, wait_job, write_prompt_completion
from tests.servers import Service, start_embedded

MAX_UPLOAD = 300  # the single-request cap: the 12-example training file (~600 bytes) is over it
MAX_PART = 4096
MAX_TOTAL = 20_000


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    service = start_embedded(
        tmp_path_factory.mktemp("uploads"),
        bases_dir,
        FTSERVE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        FTSERVE_MAX_UPLOAD_PART_BYTES=str(MAX_PART),
        FTSERVE_MAX_UPLOAD_TOTAL_BYTES=str(MAX_TOTAL),
    )
    yield service
    service.stop()


@pytest.fixture()
def client(service: Service) -> OpenAI:
    return client_for(service)


def _error(exc: pytest.ExceptionInfo[openai.APIStatusError]) -> tuple[int, str | None, str | None, str]:
    body = exc.value.body
    assert isinstance(body, dict), body
    return exc.value.status_code, body["code"], body["param"], body["message"]


@pytest.mark.storage
def test_file_over_the_request_cap_goes_in_parts_and_trains(client: OpenAI, tmp_path: Path) -> None:
    path = write_prompt_completion(tmp_path / "train.jsonl")
    data = path.read_bytes()
    assert len(data) > MAX_UPLOAD
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=path.open("rb"), purpose="fine-tune")
    status, code, param, message = _error(err)
    assert (status, code, param) == (413, "file_too_large", "file")
    assert f"upload limit of {MAX_UPLOAD} bytes" in message and "/v1/uploads" in message

    part_size = 128  # several parts, none a whole line: the composed file must be the bytes in order
    upload = client.uploads.upload_file_chunked(
        file=path, mime_type="text/jsonl", purpose="fine-tune", part_size=part_size, md5=hashlib.md5(data).hexdigest()
    )
    assert upload.object == "upload" and upload.id.startswith("upload_")
    assert upload.status == "completed" and upload.bytes == len(data) and upload.filename == "train.jsonl"
    assert upload.purpose == "fine-tune" and upload.expires_at > upload.created_at
    assert upload.file is not None and upload.file.id.startswith("file-")
    assert upload.file.status == "processed" and upload.file.bytes == len(data)
    assert upload.file.filename == "train.jsonl" and upload.file.purpose == "fine-tune"
    assert client.files.retrieve(upload.file.id).status == "processed"
    assert client.files.content(upload.file.id).read() == data

    job = client.fine_tuning.jobs.create(
        training_file=upload.file.id,
        model="ftserve-tiny",
        suffix="parts",
        seed=3,
        hyperparameters={"n_epochs": 2, "batch_size": 4},
    )
    job, _ = wait_job(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and job.trained_tokens and job.trained_tokens > 0


def _upload(client: OpenAI, size: int, filename: str = "train.jsonl") -> str:
    return client.uploads.create(bytes=size, filename=filename, mime_type="text/jsonl", purpose="fine-tune").id


def test_parts_of_the_wrong_total_are_refused_at_complete(client: OpenAI, tmp_path: Path) -> None:
    data = write_prompt_completion(tmp_path / "train.jsonl").read_bytes()
    upload_id = _upload(client, len(data) + 1)
    part = client.uploads.parts.create(upload_id=upload_id, data=data)
    assert part.object == "upload.part" and part.upload_id == upload_id and part.id.startswith("part_")
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id=upload_id, part_ids=[part.id])
    assert _error(err) == (
        400,
        "bytes_mismatch",
        "part_ids",
        f"The listed parts add up to {len(data)} bytes, but upload '{upload_id}' was created with "
        f"bytes={len(data) + 1}: the two must be equal",
    )
    # The upload stays pending: one more byte and it completes.
    tail = client.uploads.parts.create(upload_id=upload_id, data=b"\n")
    done = client.uploads.complete(upload_id=upload_id, part_ids=[part.id, tail.id])
    assert done.status == "completed" and done.file is not None and done.file.status == "processed"


def test_unknown_part_id_is_refused(client: OpenAI) -> None:
    upload_id = _upload(client, 3)
    part = client.uploads.parts.create(upload_id=upload_id, data=b"abc")
    other = client.uploads.parts.create(upload_id=_upload(client, 3), data=b"abc")
    for missing in ("part_doesnotexist", other.id):  # a part of another upload is no part of this one
        with pytest.raises(openai.BadRequestError) as err:
            client.uploads.complete(upload_id=upload_id, part_ids=[part.id, missing])
        assert _error(err) == (
            400,
            "part_not_found",
            "part_ids",
            f"part_ids[1]: no part '{missing}' in upload '{upload_id}'",
        )
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id=upload_id, part_ids=[part.id, part.id])
    assert _error(err) == (400, "duplicate_part_id", "part_ids", f"part_ids[1]: part '{part.id}' is listed twice")


def test_a_cancelled_upload_takes_no_parts_and_cannot_complete(client: OpenAI, service: Service) -> None:
    upload_id = _upload(client, 3)
    part = client.uploads.parts.create(upload_id=upload_id, data=b"abc")
    cancelled = client.uploads.cancel(upload_id)
    assert cancelled.status == "cancelled" and cancelled.id == upload_id and cancelled.file is None
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.parts.create(upload_id=upload_id, data=b"abc")
    assert _error(err) == (
        400,
        "upload_cancelled",
        "upload_id",
        f"Upload '{upload_id}' is cancelled: it cannot accept parts",
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id=upload_id, part_ids=[part.id])
    assert _error(err) == (
        400,
        "upload_cancelled",
        "upload_id",
        f"Upload '{upload_id}' is cancelled: it cannot be completed",
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.cancel(upload_id)
    assert _error(err)[:2] == (400, "upload_cancelled")
    if not service.env.get("FTSERVE_STORAGE_URL"):  # a local store: the parts are gone from the data dir
        assert not (Path(service.env["FTSERVE_DATA_DIR"]) / "uploads" / upload_id).exists()


def test_a_completed_upload_cannot_complete_again_nor_take_parts(client: OpenAI, tmp_path: Path) -> None:
    data = write_prompt_completion(tmp_path / "train.jsonl").read_bytes()
    upload_id = _upload(client, len(data))
    part = client.uploads.parts.create(upload_id=upload_id, data=data)
    key = {"Idempotency-Key": f"complete-{upload_id}"}
    first = client.uploads.complete(upload_id=upload_id, part_ids=[part.id], extra_headers=key)
    assert first.status == "completed" and first.file is not None
    # A retry under the same Idempotency-Key (the first response lost) gets the completed upload back.
    assert client.uploads.complete(upload_id=upload_id, part_ids=[part.id], extra_headers=key) == first
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id=upload_id, part_ids=[part.id])
    assert _error(err) == (
        400,
        "upload_completed",
        "upload_id",
        f"Upload '{upload_id}' is completed: it cannot be completed",
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.parts.create(upload_id=upload_id, data=b"x")
    assert _error(err)[:3] == (400, "upload_completed", "upload_id")
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.cancel(upload_id)
    assert _error(err) == (
        400,
        "upload_completed",
        "upload_id",
        f"Upload '{upload_id}' is completed: it cannot be cancelled",
    )
    assert [f.id for f in client.files.list() if f.id == first.file.id] == [first.file.id]


def test_the_composed_file_is_validated_like_an_upload(client: OpenAI) -> None:
    lines = b'{"prompt": "a", "completion": "b"}\n' * 11 + b'{"prompt": "a"}\n'
    upload_id = _upload(client, len(lines))
    parts = [
        client.uploads.parts.create(upload_id=upload_id, data=lines[i : i + 100]).id for i in range(0, len(lines), 100)
    ]
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id=upload_id, part_ids=parts)
    status, code, param, message = _error(err)
    assert (status, param) == (400, "file") and code and "line 12" in message
    errored = [f for f in client.files.list() if f.status == "error"]
    assert errored and errored[0].bytes == len(lines)


def test_md5_limits_and_parameters(client: OpenAI, service: Service) -> None:
    upload_id = _upload(client, 3)
    part = client.uploads.parts.create(upload_id=upload_id, data=b"abc")
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id=upload_id, part_ids=[part.id], md5="0" * 32)
    status, code, param, message = _error(err)
    assert (status, code, param) == (400, "md5_mismatch", "md5") and hashlib.md5(b"abc").hexdigest() in message

    with pytest.raises(openai.APIStatusError) as big:
        client.uploads.parts.create(upload_id=upload_id, data=b"x" * (MAX_PART + 1))
    assert _error(big) == (413, "part_too_large", "data", f"Part is larger than the part limit of {MAX_PART} bytes")
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.create(bytes=MAX_TOTAL + 1, filename="a.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert _error(err)[:3] == (400, "upload_too_large", "bytes")
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.create(bytes=3, filename="a.pdf", mime_type="application/pdf", purpose="fine-tune")
    assert _error(err)[:3] == (400, "invalid_mime_type", "mime_type")
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.create(bytes=3, filename="a.jsonl", mime_type="text/jsonl", purpose="assistants")
    assert _error(err)[:3] == (400, "invalid_purpose", "purpose")
    with pytest.raises(openai.NotFoundError) as missing:
        client.uploads.parts.create(upload_id="upload_nope", data=b"abc")
    assert _error(missing)[:2] == (404, "upload_not_found")
    no_data = httpx.post(f"{service.base_url}/v1/uploads/{upload_id}/parts", files={"other": b"abc"}, timeout=30)
    assert no_data.status_code == 400 and no_data.json()["error"]["param"] == "data"
    assert no_data.json()["error"]["code"] == "missing_required_parameter"

    # The total cap counts every stored part.
    big_id = _upload(client, MAX_TOTAL)
    for _ in range(MAX_TOTAL // MAX_PART):
        client.uploads.parts.create(upload_id=big_id, data=b"x" * MAX_PART)
    with pytest.raises(openai.APIStatusError) as over:
        client.uploads.parts.create(upload_id=big_id, data=b"x" * MAX_PART)
    assert _error(over)[:3] == (413, "upload_too_large", "data")


def test_a_100_mb_file_in_parts_stays_in_bounded_server_memory(tmp_path: Path, bases_dir: Path) -> None:
    import json

    import psutil

    line = json.dumps({"prompt": "The quick brown fox " * 10, "completion": " jumps over the lazy dog " * 10}) + "\n"
    path = tmp_path / "big.jsonl"
    with path.open("w") as out:
        for _ in range(100 * 1024 * 1024 // len(line) // 1000 + 1):
            out.write(line * 1000)
    size = path.stat().st_size
    (tmp_path / "data").mkdir()
    service = start_embedded(tmp_path / "data", bases_dir, FTSERVE_MAX_UPLOAD_BYTES=str(1024 * 1024))
    try:
        server = psutil.Process(service.procs[0].proc.pid)
        before = server.memory_info().rss
        client = client_for(service, timeout=600)
        upload = client.uploads.upload_file_chunked(
            file=path, mime_type="text/jsonl", purpose="fine-tune", part_size=25 * 1024 * 1024
        )
        assert upload.status == "completed" and upload.file is not None
        assert upload.file.status == "processed" and upload.file.bytes == size >= 100 * 1024 * 1024
        grown = server.memory_info().rss - before
        assert grown < 60 * 1024 * 1024, f"server RSS grew by {grown >> 20} MiB for a {size >> 20} MiB upload"
    finally:
        service.stop()
