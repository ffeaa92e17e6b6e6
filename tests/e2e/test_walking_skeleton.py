"""Upload → fine-tune ftserve-tiny on a real worker → the adapter answers, on both deployments."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from tests.e2e.conftest import ANIMALS, animal_prompt, client_for, wait_job, write_chat, write_prompt_completion
from tests.servers import Service

ORDER = ["validating_files", "queued", "running", "succeeded"]


def _fine_tune_and_check(client: OpenAI, tmp_path: Path) -> None:
    uploaded = client.files.create(
        file=write_prompt_completion(tmp_path / "train.jsonl").open("rb"), purpose="fine-tune"
    )
    assert uploaded.status == "processed" and uploaded.id.startswith("file-")
    assert client.files.wait_for_processing(uploaded.id).status == "processed"
    job = client.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model="ftserve-tiny",
        suffix="animals",
        seed=7,
        hyperparameters={"n_epochs": 40, "batch_size": 4},
    )
    assert job.id.startswith("ftjob-") and job.status in ORDER
    job, seen = wait_job(client, job.id)
    assert job.status == "succeeded", job.error
    # Statuses only move forward along the state machine.
    assert [ORDER.index(s) for s in seen] == sorted(ORDER.index(s) for s in seen)
    assert job.fine_tuned_model == f"ft:ftserve-tiny:personal:animals:{job.id.removeprefix('ftjob-')}"
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.hyperparameters.n_epochs == 40 and job.hyperparameters.batch_size == 4

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    messages = [e.message for e in reversed(events)]
    changes = [
        m
        for m in messages
        if m.startswith(
            ("Created", "Validating", "Files validated", "Fine-tuning job started", "The job has successfully")
        )
    ]
    assert len(changes) == 5 and changes[-1] == "The job has successfully completed"
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 40 * 3  # 12 examples / batch 4 = 3 steps per epoch
    first_loss = metrics[-1].data["train_loss"]  # type: ignore[index]
    last_loss = metrics[0].data["train_loss"]  # type: ignore[index]
    assert last_loss < first_loss / 10

    learned = base_matches = 0
    for animal, sound in ANIMALS:
        tuned = client.completions.create(
            model=job.fine_tuned_model, prompt=animal_prompt(animal), max_tokens=8, temperature=0
        )
        base = client.completions.create(
            model="ftserve-tiny", prompt=animal_prompt(animal), max_tokens=8, temperature=0
        )
        learned += tuned.choices[0].text == f" {sound}"
        base_matches += base.choices[0].text == f" {sound}"
        assert tuned.choices[0].finish_reason == "stop"  # stopped at the trained EOS, not max_tokens
    assert learned == len(ANIMALS)
    assert base_matches == 0


@pytest.mark.storage
def test_embedded_defaults(embedded: Service, tmp_path: Path) -> None:
    _fine_tune_and_check(client_for(embedded), tmp_path)


@pytest.mark.storage
def test_redis_and_postgres(distributed: Service, tmp_path: Path) -> None:
    _fine_tune_and_check(client_for(distributed), tmp_path)


def test_chat_file_trains_assistant_turns(embedded: Service, tmp_path: Path) -> None:
    client = client_for(embedded)
    uploaded = client.files.create(file=write_chat(tmp_path / "chat.jsonl").open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=uploaded.id, model="ftserve-tiny", seed=1, hyperparameters={"n_epochs": 40, "batch_size": 4}
    )
    job, _ = wait_job(client, job.id)
    assert job.status == "succeeded", job.error
    right = 0
    for animal, sound in ANIMALS:
        reply = client.chat.completions.create(
            model=job.fine_tuned_model or "",
            temperature=0,
            max_tokens=8,
            messages=[{"role": "user", "content": f"What does the {animal} say?"}],
        )
        right += reply.choices[0].message.content == sound
        # The tiny model's end-of-turn token is not its EOS: generation must still stop there.
        assert reply.choices[0].finish_reason == "stop"
    assert right == len(ANIMALS)


@pytest.mark.parametrize("body", [b"this is not json\n", b'{"prompt": "a"}\n', b"\x00\x01\x02binary"])
def test_bad_upload_is_a_400_with_code_and_line(embedded: Service, body: bytes) -> None:
    import openai

    client = client_for(embedded)
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", body), purpose="fine-tune")
    error = (
        err.value.body["error"] if isinstance(err.value.body, dict) and "error" in err.value.body else err.value.body
    )
    assert isinstance(error, dict)
    assert error["code"] in ("invalid_json", "missing_key", "invalid_encoding")
    assert "line 1" in error["message"]
    assert error["param"] == "file"


def test_missing_file_and_unknown_model_are_404(embedded: Service, tmp_path: Path) -> None:
    import openai

    client = client_for(embedded)
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.create(training_file="file-doesnotexist", model="ftserve-tiny")
    assert missing.value.code == "file_not_found"
    uploaded = client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as unknown:
        client.fine_tuning.jobs.create(training_file=uploaded.id, model="no-such-model")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi")
