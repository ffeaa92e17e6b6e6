"""Preference fine-tuning through a real `ftserve up` with the official client: a DPO job teaches a held-out
answer style, SFT then DPO from the SFT model, pause/resume and cancel, and the 400s a user gets."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import client_for, wait_job
from tests.preference_data import WORDS, follows_style, question, write_pairs
from tests.servers import Service, start_embedded

TRAIN, UNSEEN = WORDS[:24], WORDS[24:36]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    service = start_embedded(tmp_path_factory.mktemp("dpo"), bases_dir)
    yield service
    service.stop()


def _dpo(**hp: Any) -> Any:
    return {"type": "dpo", "dpo": {"hyperparameters": hp}}


def _upload_pairs(client: OpenAI, path: Path, words: list[str]) -> str:
    return client.files.create(file=write_pairs(path, words).open("rb"), purpose="fine-tune").id


def _style_rate(client: OpenAI, model: str) -> float:
    """The share of greedy chat answers to unseen prompts that follow the preferred style."""
    answers = [
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question(w)}], max_tokens=8, temperature=0
        )
        .choices[0]
        .message.content
        or ""
        for w in UNSEEN
    ]
    return sum(follows_style(a) for a in answers) / len(answers)


def _metrics(client: OpenAI, job_id: str) -> list[dict[str, Any]]:
    found = [e.data for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics" and e.data]
    return sorted(found, key=lambda d: d["step"])  # type: ignore[no-any-return]


def _wait_for(predicate: Callable[[], bool], timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def test_dpo_teaches_a_held_out_style_that_the_base_does_not_have(server: Service, tmp_path: Path) -> None:
    client = client_for(server)
    train = _upload_pairs(client, tmp_path / "pairs.jsonl", TRAIN)
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny", training_file=train, suffix="style", seed=0,
        method=_dpo(n_epochs=3, batch_size=4, learning_rate_multiplier=1.0),  # the random base: its full rate
    )  # fmt: skip
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None and job.method.dpo.hyperparameters.beta == "auto"
    job, _ = wait_job(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method is not None and job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.1  # "auto", resolved
    assert job.fine_tuned_model == f"ft:ftserve-tiny:personal:style:{job.id.removeprefix('ftjob-')}"

    assert _style_rate(client, job.fine_tuned_model) >= 0.9
    assert _style_rate(client, "ftserve-tiny") < 0.5

    steps = _metrics(client, job.id)
    assert [m["step"] for m in steps] == list(range(1, 19))  # 24 pairs / 4 = 6 steps x 3 epochs
    assert steps[0]["train_reward_margin"] == pytest.approx(0, abs=1e-6)  # step 1 runs the reference itself
    assert steps[-1]["train_reward_margin"] > 1
    assert steps[-1]["train_reward_accuracy"] == 1.0
    content = client.files.content(job.result_files[0]).text
    header = content.splitlines()[0].split(",")
    assert header[:5] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert "train_reward_margin" in header and len(list(csv.DictReader(io.StringIO(content)))) == 18
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert sorted(c.step_number for c in checkpoints) == [6, 12, 18]
    assert all(c.metrics.train_loss is not None for c in checkpoints)


@pytest.mark.storage
def test_sft_then_dpo_from_the_sft_model(server: Service, tmp_path: Path) -> None:
    client = client_for(server)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": question(w)}, {"role": "assistant", "content": w}]})
            + "\n"
            for w in TRAIN
        )
    )
    sft = client.fine_tuning.jobs.create(
        model="ftserve-tiny", training_file=client.files.create(file=chat.open("rb"), purpose="fine-tune").id,
        suffix="sft", seed=1, method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    )  # fmt: skip
    sft, _ = wait_job(client, sft.id)
    assert sft.status == "succeeded" and sft.fine_tuned_model
    assert _style_rate(client, sft.fine_tuned_model) == 0  # SFT taught the bare answers

    dpo = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model, training_file=_upload_pairs(client, tmp_path / "pairs.jsonl", TRAIN),
        suffix="dpo", seed=1, method=_dpo(n_epochs=3, batch_size=4, beta=0.2, learning_rate_multiplier=1.0),
    )  # fmt: skip
    assert dpo.model == sft.fine_tuned_model
    dpo, _ = wait_job(client, dpo.id)
    assert dpo.status == "succeeded", dpo.error
    assert dpo.fine_tuned_model == f"ft:ftserve-tiny:personal:dpo:{dpo.id.removeprefix('ftjob-')}"
    assert client.models.retrieve(dpo.fine_tuned_model).id == dpo.fine_tuned_model
    assert _style_rate(client, dpo.fine_tuned_model) >= 0.9
    messages = [e.message for e in client.fine_tuning.jobs.list_events(dpo.id, limit=100)]
    assert f"Starting from fine-tuned model {sft.fine_tuned_model}" in messages
    assert _metrics(client, dpo.id)[0]["train_reward_margin"] == pytest.approx(0, abs=1e-5)  # reference: the SFT model


@pytest.mark.local_storage  # looks at the data dir's files
def test_a_dpo_job_pauses_resumes_and_cancels_like_any_job(server: Service, tmp_path: Path) -> None:
    client = client_for(server)
    train = _upload_pairs(client, tmp_path / "pairs.jsonl", TRAIN)
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny", training_file=train, method=_dpo(n_epochs=8, batch_size=2)
    )
    _wait_for(lambda: len(_metrics(client, job.id)) >= 2, what="a few steps")
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    resume_point = Path(server.env["FTSERVE_DATA_DIR"]) / "jobs" / job.id / "resume" / "FTSERVE_COMPLETE"
    _wait_for(resume_point.exists, 60, "resume point")
    paused_at = max(m["step"] for m in _metrics(client, job.id))
    client.fine_tuning.jobs.resume(job.id)
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert f"Resuming from step {paused_at} (resume)" in messages
    assert "Reusing the reference log-probs computed when the job started" in messages
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 97))

    other = client.fine_tuning.jobs.create(
        model="ftserve-tiny", training_file=train, method=_dpo(n_epochs=50, batch_size=1)
    )
    _wait_for(lambda: len(_metrics(client, other.id)) >= 1, what="first step")
    assert client.fine_tuning.jobs.cancel(other.id).status == "cancelled"
    final, _ = wait_job(client, other.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None


def test_preference_input_errors_are_clear_400s(server: Service, tmp_path: Path) -> None:
    client = client_for(server)
    pairs = _upload_pairs(client, tmp_path / "pairs.jsonl", TRAIN[:12])
    prompts = tmp_path / "pc.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{w}:", "completion": f" {w}"}) + "\n" for w in TRAIN))
    supervised = client.files.create(file=prompts.open("rb"), purpose="fine-tune").id
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"training_file": supervised, "method": _dpo()}, "training_file", "invalid_file_format"),
        ({"training_file": pairs}, "training_file", "invalid_file_format"),
        ({"training_file": pairs, "method": {"type": "reinforcement"}}, "training_file", "invalid_file_format"),
    ]
    for body, param, code in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model="ftserve-tiny", **body)
        assert (err.value.body["param"], err.value.code) == (param, code), err.value.body  # type: ignore[index]
    for beta in (0, 2.5, "high"):
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model="ftserve-tiny", training_file=pairs, method=_dpo(beta=beta))
        assert "beta" in str(err.value.body["param"])  # type: ignore[index]

    bad = tmp_path / "bad.jsonl"
    lines = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    lines[6]["preferred_output"].append({"role": "assistant", "content": "and more"})
    bad.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=bad.open("rb"), purpose="fine-tune")
    assert err.value.code == "too_many_output_messages" and "line 7:" in err.value.message
