"""Reinforcement fine-tuning through a real `ftserve up` with the official client: a job with a `multi` grader
(string_check + text_similarity) on the tiny model reports rewards per step, per sub-grader and on validation;
a python grader on SmolLM2 raises the mean reward on held-out prompts above the starting model's; and the 400s
a reinforcement job's creation gives (a line without a field the grader reads, named by number)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import client_for, wait_job
from tests.servers import Service, start_embedded

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "piano",
    "lemon",
    "candle",
    "garden",
    "rocket",
    "silver",
    "window",
    "orange",
    "forest",
    "pepper",
    "bottle",
    "yellow",
    "button",
    "castle",
    "dragon",
    "pencil",
    "meadow",
    "harbor",
    "jacket",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    service = start_embedded(tmp_path_factory.mktemp("rft"), bases_dir)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def client(server: Service) -> OpenAI:
    return client_for(server)


def _prompts(path: Path, words: list[str], drop_answer_on: int | None = None) -> Path:
    lines = []
    for i, word in enumerate(words, start=1):
        line: dict[str, Any] = {"messages": [{"role": "user", "content": f"Say the word {word}."}], "answer": word}
        if i == drop_answer_on:
            del line["answer"]
        lines.append(json.dumps(line))
    path.write_text("\n".join(lines) + "\n")
    return path


def _upload(client: OpenAI, path: Path) -> str:
    return client.files.create(file=path.open("rb"), purpose="fine-tune").id


MULTI: dict[str, Any] = {
    "type": "multi",
    "name": "word",
    "graders": {
        "has_e": {
            "type": "string_check",
            "name": "has_e",
            "input": "{{sample.output_text}}",
            "reference": "%e%",
            "operation": "ilike",
        },
        "close": {
            "type": "text_similarity",
            "name": "close",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "evaluation_metric": "fuzzy_match",
        },
    },
    "calculate_output": "0.5 * has_e + 0.5 * close",
}


def _rft(grader: dict[str, Any], **hp: Any) -> Any:
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hp}}


def _metrics(client: OpenAI, job_id: str) -> list[dict[str, Any]]:
    found = [e.data for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics" and e.data]
    return sorted(found, key=lambda d: d["step"])  # type: ignore[no-any-return]


def test_a_multi_grader_job_reports_rewards(client: OpenAI, tmp_path: Path) -> None:
    train = _upload(client, _prompts(tmp_path / "train.jsonl", WORDS[:10]))
    valid = _upload(client, _prompts(tmp_path / "valid.jsonl", WORDS[10:20]))
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny",
        training_file=train,
        validation_file=valid,
        method=_rft(MULTI, n_epochs=1, batch_size=5, compute_multiplier=0.5, eval_interval=1, eval_samples=2),
        extra_body={"extensions": {"max_completion_tokens": 6}},
    )
    assert job.method is not None and job.method.type == "reinforcement"
    assert job.method.reinforcement is not None and job.method.reinforcement.grader.type == "multi"  # type: ignore[union-attr]
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model
    hp = done.method.reinforcement.hyperparameters  # type: ignore[union-attr]
    assert (hp.compute_multiplier, hp.eval_interval, hp.eval_samples, hp.batch_size) == (0.5, 1, 2, 5)

    steps = _metrics(client, job.id)
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert 0.0 <= s["train_reward_mean"] <= 1.0
        # the formula's value is the mean of its sub-graders' halves, sample by sample, so on average too
        combined = 0.5 * s["train_reward_mean_has_e"] + 0.5 * s["train_reward_mean_close"]
        assert s["train_reward_mean"] == pytest.approx(combined, abs=1e-6)
        assert 1 <= s["train_sample_tokens_mean"] <= 7  # up to 6 sampled tokens, plus a stop token
        assert s["train_grader_errors"] == 0
        assert 0.0 <= s["valid_reward_mean"] <= 1.0
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].metrics.model_dump()["train_reward_mean"] == steps[-1]["train_reward_mean"]
    result = client.files.content(done.result_files[0]).text
    rows = list(csv.DictReader(io.StringIO(result)))
    assert len(rows) == 2 and rows[0]["train_reward_mean"] != ""
    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Say the word apple."}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None


def test_a_line_without_what_the_grader_reads_is_refused_by_number(client: OpenAI, tmp_path: Path) -> None:
    train = _upload(client, _prompts(tmp_path / "train.jsonl", WORDS[:10], drop_answer_on=7))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="ftserve-tiny", training_file=train, method=_rft(MULTI))
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_grader_reference"
    assert error["param"] == "method.reinforcement.grader.graders.close.reference"
    assert "Line 7 of training_file" in error["message"] and "'answer'" in error["message"]


@pytest.mark.parametrize(
    ("method", "param", "code"),
    [
        (_rft(MULTI, reasoning_effort="high"), "method.reinforcement.hyperparameters.reasoning_effort", None),
        ({"type": "reinforcement"}, "method.reinforcement", None),
        (_rft({**MULTI, "calculate_output": "has_e + nope"}), "method.reinforcement.grader.calculate_output", None),
        (_rft(MULTI, compute_multiplier=11), "method.reinforcement.hyperparameters.compute_multiplier", None),
    ],
)
def test_what_a_reinforcement_job_cannot_run_with_is_a_400(
    client: OpenAI, tmp_path: Path, method: Any, param: str, code: str | None
) -> None:
    train = _upload(client, _prompts(tmp_path / "train.jsonl", WORDS[:10]))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="ftserve-tiny", training_file=train, method=method)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error


def test_prompts_are_refused_by_the_other_methods(client: OpenAI, tmp_path: Path) -> None:
    train = _upload(client, _prompts(tmp_path / "train.jsonl", WORDS[:10]))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="ftserve-tiny", training_file=train)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_file_format"
    assert "method.type 'reinforcement'" in error["message"]


def test_a_label_model_grader_judges_rollouts_through_the_serving_path(client: OpenAI, tmp_path: Path) -> None:
    """The judge is a served model (the tiny base), asked over the serving path by the worker for every rollout."""
    judge = {
        "type": "label_model",
        "name": "polite",
        "model": "ftserve-tiny",
        "input": [{"role": "user", "content": "Is this polite? {{sample.output_text}}"}],
        "labels": ["yes", "no"],
        "passing_labels": ["yes"],
    }
    train = _upload(client, _prompts(tmp_path / "train.jsonl", WORDS[:10]))
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny",
        training_file=train,
        # OpenAI takes a label_model inside a multi only
        method=_rft(
            {"type": "multi", "name": "judged", "graders": {"polite": judge}, "calculate_output": "polite"},
            n_epochs=1,
            batch_size=5,
            compute_multiplier=0.5,
        ),
        extra_body={"extensions": {"max_completion_tokens": 4}},
    )
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    steps = _metrics(client, job.id)
    assert len(steps) == 2
    # every rollout was judged (a judge the worker could not reach would flag each grade a server error)
    assert all(s["train_grader_errors"] == 0 for s in steps), steps
    assert all(s["train_reward_mean"] in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0) for s in steps)


BREVITY = """
def grade(sample, item):
    words = len(sample["output_text"].split())
    return max(0.0, 1.0 - words / 30)
"""
TOPICS = [
    "a fruit", "an animal that lives in the sea", "a color", "a city in Europe", "a musical instrument",
    "a sport", "a planet", "a tree", "a bird", "a vegetable", "a flower", "a metal", "a river", "a game",
    "a tool", "a drink",
]  # fmt: skip


def _topic_prompts(path: Path, topics: list[str]) -> Path:
    lines = [json.dumps({"messages": [{"role": "user", "content": f"Tell me about {t}."}]}) for t in topics]
    path.write_text("\n".join(lines) + "\n")
    return path


def _held_out_reward(client: OpenAI, model: str, topics: list[str]) -> float:
    """The brevity grader's mean reward on greedy answers to held-out prompts, graded by the grader endpoint."""
    rewards = []
    for topic in topics:
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Tell me about {topic}."}], max_tokens=32, temperature=0
        )
        graded = client.fine_tuning.alpha.graders.run(
            grader={"type": "python", "name": "brevity", "source": BREVITY},
            model_sample=answer.choices[0].message.content or "",
        )
        rewards.append(graded.reward)
    return sum(rewards) / len(rewards)


def test_a_python_grader_raises_smollm2s_held_out_reward(smollm2_embedded: Service, tmp_path: Path) -> None:
    """GRPO with a python grader that rewards short answers: on prompts it never trained on, the fine-tuned
    model's greedy answers score clearly above SmolLM2's own."""
    client = client_for(smollm2_embedded, timeout=300)
    train = _upload(client, _topic_prompts(tmp_path / "train.jsonl", TOPICS[:12]))
    held_out = TOPICS[12:]
    job = client.fine_tuning.jobs.create(
        model="smollm2-135m-instruct",
        training_file=train,
        method=_rft(
            {"type": "python", "name": "brevity", "source": BREVITY},
            n_epochs=3,
            batch_size=4,
            learning_rate_multiplier=10,
        ),
        seed=1,
        extra_body={"extensions": {"max_completion_tokens": 32}},
    )
    done, _ = wait_job(client, job.id, timeout=900)
    assert done.status == "succeeded", done.error
    steps = _metrics(client, job.id)
    before, after = _held_out_reward(client, "smollm2-135m-instruct", held_out), None
    after = _held_out_reward(client, done.fine_tuned_model or "", held_out)
    print(f"held-out brevity reward: base {before:.3f}, fine-tuned {after:.3f}; train reward by step "
          f"{[round(s['train_reward_mean'], 3) for s in steps]}")  # fmt: skip
    assert after > before + 0.15


def test_rft_continues_a_supervised_model(client: OpenAI, tmp_path: Path) -> None:
    """SFT → RFT: a reinforcement job starts from an ft: model, samples with its adapter, and yields a new model."""
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "\n".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"Say the word {w}."}, {"role": "assistant", "content": w}]}
            )
            for w in WORDS[:10]
        )
        + "\n"
    )
    sft = client.fine_tuning.jobs.create(
        model="ftserve-tiny", training_file=_upload(client, chat), hyperparameters={"n_epochs": 1, "batch_size": 5}
    )
    sft_done, _ = wait_job(client, sft.id)
    assert sft_done.status == "succeeded" and sft_done.fine_tuned_model
    train = _upload(client, _prompts(tmp_path / "train.jsonl", WORDS[:10]))
    rft = client.fine_tuning.jobs.create(
        model=sft_done.fine_tuned_model,
        training_file=train,
        method=_rft(MULTI, n_epochs=1, batch_size=5, compute_multiplier=0.5),
        extra_body={"extensions": {"max_completion_tokens": 4}},
    )
    done, _ = wait_job(client, rft.id)
    assert done.status == "succeeded", done.error
    assert done.model == sft_done.fine_tuned_model
    assert done.fine_tuned_model and done.fine_tuned_model != sft_done.fine_tuned_model
    events = [e.message for e in client.fine_tuning.jobs.list_events(rft.id, limit=100)]
    assert any(m.startswith("Starting from fine-tuned model") for m in events)
    assert len(_metrics(client, rft.id)) == 2
