"""Reinforcement fine-tuning through a real `ftserve up` with the official client: a job with a `multi` grader
(string_check + text_similarity) on the tiny model reports rewards per step, per sub-grader and on validation;
a python grader on SmolLM2 raises the mean reward on held-out prompts above the starting model's; and the 400s
a reinforcement job's creation gives (a line without a field the grader reads, named by number)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest
from openai import OpenAI

from tests.e2e.conftest import client_for, wait_job
from tests.rft_data import MULTI, TINY_EXTENSIONS, WORDS, metrics, rft, upload_prompts, write_prompts
from tests.servers import Service, start_embedded

# Step 2 of a job with the suffix "slow" holds 3 s more: time to pause or cancel it mid-run.
SLOW_STEP = json.dumps({"suffix": "slow", "kind": "sleep", "at_step": 2, "seconds": 3})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    service = start_embedded(tmp_path_factory.mktemp("rft"), bases_dir, FTSERVE_FAULT_INJECTION=SLOW_STEP)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def client(server: Service) -> OpenAI:
    return client_for(server)


def _upload(client: OpenAI, path: Path) -> str:
    return client.files.create(file=path.open("rb"), purpose="fine-tune").id


@pytest.mark.storage  # its prompts, checkpoint, result file and adapter go through the store (S3 in that pass)
def test_a_multi_grader_job_reports_rewards(client: OpenAI, tmp_path: Path) -> None:
    train = _upload(client, write_prompts(tmp_path / "train.jsonl", WORDS[:10]))
    valid = _upload(client, write_prompts(tmp_path / "valid.jsonl", WORDS[10:20]))
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny",
        training_file=train,
        validation_file=valid,
        method=rft(MULTI, n_epochs=1, batch_size=5, compute_multiplier=0.5, eval_interval=1, eval_samples=2),
        extra_body={"extensions": {"max_completion_tokens": 6}},
    )
    assert job.method is not None and job.method.type == "reinforcement"
    assert job.method.reinforcement is not None and job.method.reinforcement.grader.type == "multi"  # type: ignore[union-attr]
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model
    hp = done.method.reinforcement.hyperparameters  # type: ignore[union-attr]
    assert (hp.compute_multiplier, hp.eval_interval, hp.eval_samples, hp.batch_size) == (0.5, 1, 2, 5)

    steps = metrics(client, job.id)
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
    train = _upload(client, write_prompts(tmp_path / "train.jsonl", WORDS[:10], drop_answer_on=7))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="ftserve-tiny", training_file=train, method=rft(MULTI))
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_grader_reference"
    assert error["param"] == "method.reinforcement.grader.graders.close.reference"
    assert "Line 7 of training_file" in error["message"] and "'answer'" in error["message"]


@pytest.mark.parametrize(
    ("method", "param", "code"),
    [
        (rft(MULTI, reasoning_effort="high"), "method.reinforcement.hyperparameters.reasoning_effort", None),
        ({"type": "reinforcement"}, "method.reinforcement", None),
        (rft({**MULTI, "calculate_output": "has_e + nope"}), "method.reinforcement.grader.calculate_output", None),
        (rft(MULTI, compute_multiplier=11), "method.reinforcement.hyperparameters.compute_multiplier", None),
    ],
)
def test_what_a_reinforcement_job_cannot_run_with_is_a_400(
    client: OpenAI, tmp_path: Path, method: Any, param: str, code: str | None
) -> None:
    train = _upload(client, write_prompts(tmp_path / "train.jsonl", WORDS[:10]))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="ftserve-tiny", training_file=train, method=method)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error


def test_prompts_are_refused_by_the_other_methods(client: OpenAI, tmp_path: Path) -> None:
    train = _upload(client, write_prompts(tmp_path / "train.jsonl", WORDS[:10]))
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
    train = _upload(client, write_prompts(tmp_path / "train.jsonl", WORDS[:10]))
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny",
        training_file=train,
        # OpenAI takes a label_model inside a multi only
        method=rft(
            {"type": "multi", "name": "judged", "graders": {"polite": judge}, "calculate_output": "polite"},
            n_epochs=1,
            batch_size=5,
            compute_multiplier=0.5,
        ),
        extra_body={"extensions": {"max_completion_tokens": 4}},
    )
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    steps = metrics(client, job.id)
    assert len(steps) == 2
    # every rollout was judged (a judge the worker could not reach would flag each grade a server error)
    assert all(s["train_grader_errors"] == 0 for s in steps), steps
    assert all(s["train_reward_mean"] in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0) for s in steps)


def _wait_for(predicate: Callable[[], object], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _in_slow_step(client: OpenAI, job_id: str) -> None:
    """Wait until the worker holds step 2 of a "slow" job (the check before it follows step 1's event at once;
    the step itself holds 3 s)."""
    _wait_for(lambda: metrics(client, job_id), "step 1")
    time.sleep(0.5)


def _messages(client: OpenAI, job_id: str) -> list[str]:
    return [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))]


def test_a_paused_job_resumes_where_it_stopped_and_keeps_its_evaluation_schedule(
    client: OpenAI, tmp_path: Path
) -> None:
    """Paused mid-run, the job saves a resume point and lets its worker go; resumed, a new run goes on from that
    step: every step once, validation every eval_interval steps of the job (not of the run), as if never paused."""
    train = upload_prompts(client, tmp_path / "train.jsonl", WORDS[:10])
    valid = upload_prompts(client, tmp_path / "valid.jsonl", WORDS[10:20])
    hp = {"n_epochs": 2, "batch_size": 2, "compute_multiplier": 0.5, "eval_interval": 3, "eval_samples": 2}
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny",
        training_file=train,
        validation_file=valid,
        suffix="slow",
        method=rft(MULTI, **hp),
        extra_body=TINY_EXTENSIONS,
    )
    _in_slow_step(client, job.id)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    _wait_for(lambda: any(m.startswith("Paused at step") for m in _messages(client, job.id)), "the resume point")
    paused = next(m for m in _messages(client, job.id) if m.startswith("Paused at step"))
    paused_at = int(paused.split()[3].rstrip(";"))
    assert paused_at in (1, 2) and client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    client.fine_tuning.jobs.resume(job.id)
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert [m for m in _messages(client, job.id) if m.startswith("Resuming")] == [
        f"Resuming from step {paused_at} (resume)"
    ]
    steps = metrics(client, job.id)
    assert [s["step"] for s in steps] == list(range(1, 11))  # 2 epochs of 5 steps, none lost or redone
    assert {s["total_steps"] for s in steps} == {10}
    # eval_interval 3 counts the job's steps: 3, 6, 9 (a run counting from its resume point would say 5, 8)
    assert [s["step"] for s in steps if "valid_reward_mean" in s] == [3, 6, 9]
    assert [s["step"] for s in steps if "full_valid_reward_mean" in s] == [5, 10]  # each epoch's end
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == [5, 10]


def _worker(server: Service) -> psutil.Process:
    """The Celery worker `ftserve up` runs (its one child process), which trains the jobs."""
    (worker,) = psutil.Process(server.procs[0].proc.pid).children()
    return worker


def _tasks_done(server: Service) -> int:
    """How many run_job tasks the worker has returned from (its log says so once each has ended)."""
    return server.procs[0].log_path.read_text(errors="replace").count("ftserve.run_job[") // 2


def _sampling(client: OpenAI, job_id: str) -> bool:
    """Whether the run has begun its steps (the method's note just before the first)."""
    return any(m.startswith("Sampling ") for m in _messages(client, job_id))


# A python grader (each grade a sandboxed process of its own), and one that takes 1.5 s a grade: a step of 10
# answers grades for 4.5 s in the pool's 4 threads, whatever the machine's speed.
LENGTH = {
    "type": "python",
    "name": "length",
    "source": "def grade(sample, item):\n    return min(1.0, len(sample['output_text']) / 50)\n",
}
SLOW_GRADER = {
    "type": "python",
    "name": "slow",
    "source": "import time\n\ndef grade(sample, item):\n    time.sleep(1.5)\n    return 0.5\n",
}
# Answers of up to 960 tokens: the tiny model's random weights seldom stop early, so a step of 60 of them samples
# for seconds on a CPU (about 6 s on 2 busy cores, after the worker's first job).
LONG_ANSWERS = {"extensions": {"max_completion_tokens": 960}}


def test_a_job_cancelled_while_it_samples_stops_at_once_releases_its_sampler_and_graders_and_the_next_job_trains(
    server: Service, client: OpenAI, tmp_path: Path
) -> None:
    """Cancelled while its step's long answers are sampled, the job abandons the step (no optimizer step) and its
    worker lets it go within seconds, not at the step's end; it ends cancelled with nothing logged after; the
    worker is back to the threads it had after a finished reinforcement job (the rollout engine's batcher thread,
    its adapter loader and the grader pool released), no grader process is left, and the next job trains."""
    train = upload_prompts(client, tmp_path / "train.jsonl", WORDS[:10])
    tiny = rft(MULTI, n_epochs=1, batch_size=5, compute_multiplier=0.5)
    tasks = _tasks_done(server)
    first = client.fine_tuning.jobs.create(
        model="ftserve-tiny", training_file=train, method=tiny, extra_body=TINY_EXTENSIONS
    )
    assert wait_job(client, first.id)[0].status == "succeeded"
    _wait_for(lambda: _tasks_done(server) == tasks + 1, "the worker to end the first job")
    at_rest = _worker(server).num_threads()

    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny",
        training_file=train,
        method=rft(LENGTH, n_epochs=1, batch_size=10, compute_multiplier=1.5),  # one step of 10 × 6 answers
        extra_body=LONG_ANSWERS,
        seed=3,
    )
    _wait_for(lambda: _sampling(client, job.id), "the first step")
    time.sleep(0.5)  # step 1 samples from the note on
    asked = time.monotonic()
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    _wait_for(lambda: _tasks_done(server) == tasks + 2, "the worker to stop")
    took = time.monotonic() - asked
    logs = server.logs()
    abandoned = (
        f"job {job.id}: step 1 abandoned before its optimizer step: the job stopped while its rollouts were sampled"
    )
    assert abandoned in logs and f"job {job.id} stopped" in logs
    assert took < 5, f"the worker let the job go {took:.1f} s after the cancel"  # the step samples for longer
    events = _messages(client, job.id)
    assert events[events.index("Fine-tuning job cancelled") + 1 :] == []  # no step, no checkpoint after it
    assert not metrics(client, job.id)
    after = client.fine_tuning.jobs.retrieve(job.id)
    assert after.status == "cancelled" and after.fine_tuned_model is None
    assert _worker(server).children(recursive=True) == []  # no sandboxed grader outlived the job
    # Threads end a moment after they are told to (the adapter loader's): wait for the count, fail if it stays up.
    _wait_for(lambda: _worker(server).num_threads() <= at_rest, f"the worker's threads back to {at_rest}", 30)

    following = client.fine_tuning.jobs.create(
        model="ftserve-tiny", training_file=train, method=tiny, extra_body=TINY_EXTENSIONS
    )
    done, _ = wait_job(client, following.id)
    assert done.status == "succeeded", done.error
    assert [s["step"] for s in metrics(client, following.id)] == [1, 2]


@pytest.mark.storage  # its resume point goes through the store
def test_a_job_paused_while_its_step_grades_resumes_with_that_step_run_again(
    server: Service, client: OpenAI, tmp_path: Path
) -> None:
    """Paused while step 2's answers are graded (4.5 s of it), the job abandons step 2 before its optimizer step and
    saves its resume point at step 1 within seconds; resumed, it runs step 2 again from there: every step once,
    with its rewards, as if never paused."""
    train = upload_prompts(client, tmp_path / "train.jsonl", WORDS[:10])
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny",
        training_file=train,
        method=rft(SLOW_GRADER, n_epochs=1, batch_size=5, compute_multiplier=0.5),  # 2 steps of 10 answers
        extra_body=TINY_EXTENSIONS,
    )
    _wait_for(lambda: metrics(client, job.id), "step 1")
    time.sleep(0.5)  # step 2 grades, 4.5 s in all
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    _wait_for(lambda: any(m.startswith("Paused at step") for m in _messages(client, job.id)), "the resume point")
    paused = [m for m in _messages(client, job.id) if m.startswith("Paused at step")]
    assert paused == ["Paused at step 1; resume point saved"], paused  # not after step 2: it was abandoned
    abandoned = (
        f"job {job.id}: step 2 abandoned before its optimizer step: the job stopped while its rollouts were graded"
    )
    assert abandoned in server.logs()
    client.fine_tuning.jobs.resume(job.id)
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert [m for m in _messages(client, job.id) if m.startswith("Resuming")] == ["Resuming from step 1 (resume)"]
    steps = metrics(client, job.id)
    assert [s["step"] for s in steps] == [1, 2]
    assert [s["train_reward_mean"] for s in steps] == [0.5, 0.5] and all(s["train_grader_errors"] == 0 for s in steps)
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == [1, 2]


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
        method=rft(
            {"type": "python", "name": "brevity", "source": BREVITY},
            n_epochs=2,
            batch_size=4,
            learning_rate_multiplier=10,
        ),
        seed=1,
        extra_body={"extensions": {"max_completion_tokens": 32}},
    )
    done, _ = wait_job(client, job.id, timeout=900)
    assert done.status == "succeeded", done.error
    steps = metrics(client, job.id)
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
    train = _upload(client, write_prompts(tmp_path / "train.jsonl", WORDS[:10]))
    continued = client.fine_tuning.jobs.create(
        model=sft_done.fine_tuned_model,
        training_file=train,
        method=rft(MULTI, n_epochs=1, batch_size=5, compute_multiplier=0.5),
        extra_body={"extensions": {"max_completion_tokens": 4}},
    )
    done, _ = wait_job(client, continued.id)
    assert done.status == "succeeded", done.error
    assert done.model == sft_done.fine_tuned_model
    assert done.fine_tuned_model and done.fine_tuned_model != sft_done.fine_tuned_model
    events = [e.message for e in client.fine_tuning.jobs.list_events(continued.id, limit=100)]
    assert any(m.startswith("Starting from fine-tuned model") for m in events)
    assert len(metrics(client, continued.id)) == 2
