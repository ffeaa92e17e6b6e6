"""A real `ftserve up` and the openai client: validation metrics, servable checkpoints, the result CSV, and a
checkpoint as the starting model of a new job."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.e2e.conftest import ANIMALS, animal_prompt, client_for, wait_job
from tests.servers import Service, start_embedded


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    service = start_embedded(tmp_path_factory.mktemp("training"), bases_dir)
    yield service
    service.stop()


def _upload(client: OpenAI, path: Path, pairs: list[tuple[str, str]]) -> str:
    path.write_text("".join(json.dumps({"prompt": animal_prompt(a), "completion": f" {s}"}) + "\n" for a, s in pairs))
    return client.files.create(file=path.open("rb"), purpose="fine-tune").id


def test_validation_metrics_checkpoints_csv_and_continuing_from_a_checkpoint(server: Service, tmp_path: Path) -> None:
    client = client_for(server)
    train = _upload(client, tmp_path / "train.jsonl", ANIMALS)
    valid = _upload(client, tmp_path / "valid.jsonl", ANIMALS[:10])
    job = client.fine_tuning.jobs.create(
        training_file=train,
        validation_file=valid,
        model="ftserve-tiny",
        suffix="val",
        seed=4,
        hyperparameters={"n_epochs": 3, "batch_size": 4},
        extra_body={"extensions": {"prompt_loss_weight": 0.01, "warmup_ratio": 0.2, "lr_scheduler": "cosine"}},
    )
    job, _ = wait_job(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.trained_tokens and job.trained_tokens > 0

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = sorted((e.data for e in events if e.type == "metrics" and e.data), key=lambda d: d["step"])
    assert [m["step"] for m in metrics] == list(range(1, 10))  # 12 examples / 4 = 3 steps x 3 epochs
    for m in metrics:
        assert m["train_loss"] > 0 and 0 <= m["train_mean_token_accuracy"] <= 1
        assert m["valid_loss"] > 0 and 0 <= m["valid_mean_token_accuracy"] <= 1
    epoch_ends = [m for m in metrics if "full_valid_loss" in m]
    assert [m["step"] for m in epoch_ends] == [3, 6, 9]
    assert epoch_ends[-1]["full_valid_loss"] < epoch_ends[0]["full_valid_loss"]
    hp_event = next(e for e in events if e.message.startswith("Hyperparameters"))
    assert hp_event.data and hp_event.data["lr_scheduler"] == "cosine" and hp_event.data["prompt_loss_weight"] == 0.01

    # The result CSV: one row per step, OpenAI's columns.
    content = client.files.content(job.result_files[0]).read().decode()
    rows = list(csv.DictReader(io.StringIO(content)))
    assert content.splitlines()[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert float(rows[-1]["valid_loss"]) == pytest.approx(metrics[-1]["valid_loss"])

    # Each epoch's checkpoint is a servable model.
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert sorted(c.step_number for c in checkpoints) == [3, 6, 9]
    first = min(checkpoints, key=lambda c: c.step_number)
    assert first.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-3"
    assert first.metrics.full_valid_loss == pytest.approx(epoch_ends[0]["full_valid_loss"])
    reply = client.completions.create(
        model=first.fine_tuned_model_checkpoint, prompt=animal_prompt("cat"), max_tokens=4, temperature=0
    )
    assert reply.model == first.fine_tuned_model_checkpoint and reply.choices[0].text

    # A checkpoint starts a new job: it continues from the checkpoint's weights, not from the base.
    more = client.fine_tuning.jobs.create(
        training_file=train, model=first.fine_tuned_model_checkpoint, seed=4, hyperparameters={"n_epochs": 1}
    )
    more, _ = wait_job(client, more.id)
    assert more.status == "succeeded", more.error
    start_events = [e.message for e in client.fine_tuning.jobs.list_events(more.id, limit=100)]
    assert f"Starting from fine-tuned model {first.fine_tuned_model_checkpoint}" in start_events
    continued = sorted(
        (e.data for e in client.fine_tuning.jobs.list_events(more.id, limit=100) if e.type == "metrics" and e.data),
        key=lambda d: d["step"],
    )
    fresh_first_loss = metrics[0]["train_loss"]
    assert continued[0]["train_loss"] < fresh_first_loss
    answer = client.completions.create(model=more.fine_tuned_model or "", prompt=animal_prompt("dog"), max_tokens=4)
    assert answer.choices[0].text is not None
