"""Jobs survive faults: a SIGKILLed worker, a Redis restart, an api restart, cancel mid-training, an OOM."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob
from sqlalchemy import Engine, create_engine, delete, select

from ftserve.control.db.tables import Checkpoint, FineTunedModel, JobEvent
from tests.e2e.conftest import ANIMALS, animal_prompt, client_for, wait_job, write_prompt_completion
from tests.rft_data import MULTI, TINY_EXTENSIONS, rft, upload_prompts
from tests.rft_data import WORDS as RFT_WORDS
from tests.rft_data import metrics as rft_metrics
from tests.servers import FTSERVE, Proc, Service, free_port, start_distributed, start_embedded, wait_http

FAST_LEASE = {
    "FTSERVE_LEASE_SECONDS": "4",
    "FTSERVE_HEARTBEAT_SECONDS": "1",
    "FTSERVE_REAPER_INTERVAL_SECONDS": "1",
    "FTSERVE_MAX_JOB_ATTEMPTS": "2",
    "FTSERVE_REQUEUE_AFTER_SECONDS": "3",
}
LONG_JOB = {"n_epochs": 40, "batch_size": 4}  # 120 steps: long enough to be interrupted on purpose


def _upload(client: OpenAI, tmp_path: Path) -> str:
    return client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune").id


def _wait_for(predicate: object, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def _messages(client: OpenAI, job_id: str) -> list[str]:
    return [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))]


def _restart_worker(service: Service, data: Path) -> Proc:
    worker = Proc([*FTSERVE, "worker", "--name", f"w{time.monotonic_ns()}"], service.env, data / f"w{time.time()}.log")
    service.procs.append(worker)
    return worker


def _kill_worker_after_checkpoint(client: OpenAI, service: Service, job_id: str) -> None:
    _wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job_id).data, what="first checkpoint")
    worker = service.procs[-1]
    worker.stop(sig=signal.SIGKILL)
    assert client.fine_tuning.jobs.retrieve(job_id).status == "running"  # the DB still says running…


@pytest.fixture()
def faulty(tmp_path: Path, bases_dir: Path, postgres_url: str, redis_url: str) -> Iterator[Service]:
    # Every checkpoint kept, so the test can still list the one a lost worker never registered; step 3 of a "slow"
    # job (a reinforcement job of 2 steps an epoch, whose steps are quick) holds 10 s, on every attempt: the kill
    # after its first checkpoint lands there, and so does the one after it resumed. A "once" job's step 3 holds
    # only on its first attempt: killed there, it resumes and goes on at once.
    keep = {"FTSERVE_CHECKPOINTS_KEEP": "100"}
    slow = json.dumps(
        [
            {"suffix": "slow", "kind": "sleep", "at_step": 3, "seconds": 10},
            {"suffix": "once", "kind": "sleep", "at_step": 3, "seconds": 10, "attempt": 1},
        ]
    )
    service = start_distributed(
        tmp_path, bases_dir, postgres_url, redis_url, **FAST_LEASE, **keep, FTSERVE_FAULT_INJECTION=slow
    )  # fmt: skip
    yield service
    service.stop()


def _db(service: Service) -> Engine:
    return create_engine(service.env["FTSERVE_DATABASE_URL"])


def _forget_newest_checkpoint(service: Service, job_id: str) -> int:
    """Delete the newest checkpoint's rows, as if its worker died after saving its files but before the DB."""
    with _db(service).begin() as conn:
        step, name = conn.execute(
            select(Checkpoint.step_number, Checkpoint.fine_tuned_model_checkpoint)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.step_number.desc())
        ).first()  # type: ignore[misc]
        conn.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step_number == step))
        conn.execute(delete(FineTunedModel).where(FineTunedModel.id == name))
        conn.execute(delete(JobEvent).where(JobEvent.job_id == job_id, JobEvent.message.endswith(f"at step {step}")))
    return int(step)


@pytest.mark.storage
def test_killed_worker_job_resumes_from_checkpoint_or_fails_worker_lost(faulty: Service, tmp_path: Path) -> None:
    client = client_for(faulty)
    file_id = _upload(client, tmp_path)
    job = client.fine_tuning.jobs.create(training_file=file_id, model="ftserve-tiny", hyperparameters=LONG_JOB)
    _kill_worker_after_checkpoint(client, faulty, job.id)
    unregistered = _forget_newest_checkpoint(faulty, job.id)
    _restart_worker(faulty, tmp_path)
    done, _ = wait_job(client, job.id)  # …until the reaper requeues it and the new worker resumes it
    assert done.status == "succeeded", done.error
    messages = _messages(client, job.id)
    assert any("stopped responding; job re-queued (attempt 1 of 2)" in m for m in messages)
    resumed = [m for m in messages if m.startswith("Resuming from step")]
    assert len(resumed) == 1 and int(resumed[0].split()[3]) >= unregistered >= 3
    # The checkpoint its files held but the DB did not is registered on resume: event, row, servable model.
    found = f"Checkpoint at step {unregistered} found on disk and registered"
    assert sum(m.startswith(found) for m in messages) == 1, messages
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id, limit=100)
    listed = {c.step_number: c.fine_tuned_model_checkpoint for c in checkpoints}
    assert unregistered in listed
    assert client.models.retrieve(listed[unregistered]).id == listed[unregistered]
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 121))  # every step once, none lost or repeated
    answer = client.completions.create(
        model=done.fine_tuned_model or "", prompt=animal_prompt("cow"), max_tokens=6, temperature=0
    )
    assert answer.choices[0].text == " moo"

    # A reinforcement job killed in step 3 (held there on its first attempt) after its first epoch's checkpoint:
    # requeued, it resumes from that checkpoint (its rollout engine and grader pool built anew) and succeeds,
    # every step once, with its rewards after the resume as before it.
    prompts = upload_prompts(client, tmp_path / "prompts.jsonl", RFT_WORDS[:10])
    rft_job = _held_rft_job(client, prompts, "once")
    _kill_worker_after_checkpoint(client, faulty, rft_job.id)  # attempt 1, in step 3
    _restart_worker(faulty, tmp_path)
    done, _ = wait_job(client, rft_job.id)
    assert done.status == "succeeded", done.error
    resumed = [m for m in _messages(client, rft_job.id) if m.startswith("Resuming")]
    assert [m.split(" (")[0] for m in resumed] == ["Resuming from step 2"]  # its epoch's checkpoint
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))  # 3 epochs of 2 steps: every step once
    assert all(0.0 <= float(r["train_reward_mean"]) <= 1.0 for r in rows), rows
    steps = rft_metrics(client, rft_job.id)
    assert [s["step"] for s in steps] == list(range(1, 7))  # no step's event lost or repeated by the kill
    after = [s for s in steps if s["step"] > 2]
    assert all("train_reward_mean_has_e" in s and "train_reward_mean_close" in s for s in after), after
    checkpoints = client.fine_tuning.jobs.checkpoints.list(rft_job.id, limit=100).data
    assert sorted(c.step_number for c in checkpoints) == [2, 4, 6]
    by_step = {s["step"]: s for s in steps}
    for c in checkpoints:  # each epoch's checkpoint holds its own step's rewards
        assert c.metrics.model_dump()["train_reward_mean"] == by_step[c.step_number]["train_reward_mean"]

    # Killed on every attempt: after the limit the job fails with worker_lost, never stuck in running.
    job3 = _held_rft_job(client, prompts, "slow")
    _kill_worker_after_checkpoint(client, faulty, job3.id)  # attempt 1, in step 3
    _restart_worker(faulty, tmp_path)
    _wait_for(lambda: any(m.startswith("Resuming") for m in _messages(client, job3.id)), 60, "attempt 2")
    faulty.procs[-1].stop(sig=signal.SIGKILL)  # attempt 2, the last one allowed, in step 3 again
    _wait_for(lambda: client.fine_tuning.jobs.retrieve(job3.id).status == "failed", 60, "worker_lost")
    failed = client.fine_tuning.jobs.retrieve(job3.id)
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "worker_lost"
    resumed = [m for m in _messages(client, job3.id) if m.startswith("Resuming")]
    assert [m.split(" (")[0] for m in resumed] == ["Resuming from step 2"]


def _held_rft_job(client: OpenAI, prompts: str, suffix: str) -> FineTuningJob:
    """A tiny reinforcement job of 3 epochs of 2 quick steps, its step 3 held 10 s by the suffix's fault."""
    return client.fine_tuning.jobs.create(
        training_file=prompts, model="ftserve-tiny", suffix=suffix, extra_body=TINY_EXTENSIONS,
        method=rft(MULTI, n_epochs=3, batch_size=5, compute_multiplier=0.5),
    )  # fmt: skip


def test_redis_restart_loses_no_job(tmp_path: Path, bases_dir: Path, postgres_url: str) -> None:
    port = free_port()
    redis_cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    service = start_distributed(tmp_path, bases_dir, postgres_url, f"redis://127.0.0.1:{port}/0", **FAST_LEASE)
    try:
        client = client_for(service)
        file_id = _upload(client, tmp_path)
        running = client.fine_tuning.jobs.create(
            training_file=file_id, model="ftserve-tiny", hyperparameters={"n_epochs": 40, "batch_size": 4}
        )
        _wait_for(lambda: client.fine_tuning.jobs.retrieve(running.id).status == "running", what="running")
        waiting = client.fine_tuning.jobs.create(
            training_file=file_id, model="ftserve-tiny", hyperparameters={"n_epochs": 2}
        )
        redis.kill()  # no persistence: the queued message for `waiting` is gone with it
        redis.wait()
        during = client.fine_tuning.jobs.create(
            training_file=file_id, model="ftserve-tiny", hyperparameters={"n_epochs": 2}
        )
        assert during.status == "queued"  # committed even though the broker is down
        time.sleep(2)
        redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
        for job_id in (running.id, waiting.id, during.id):
            done, _ = wait_job(client, job_id, timeout=240)
            assert done.status == "succeeded", (job_id, done.error)
    finally:
        service.stop()
        redis.kill()


def test_api_restart_during_a_job(tmp_path: Path, bases_dir: Path, postgres_url: str, redis_url: str) -> None:
    service = start_distributed(tmp_path, bases_dir, postgres_url, redis_url)
    try:
        client = client_for(service)
        job = client.fine_tuning.jobs.create(
            training_file=_upload(client, tmp_path),
            model="ftserve-tiny",
            hyperparameters={"n_epochs": 30, "batch_size": 4},
        )
        _wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "running", what="running")
        api = service.procs[0]
        api.stop()
        port = service.base_url.rsplit(":", 1)[1]
        service.procs[0] = Proc(
            [*FTSERVE, "api", "--with-inference", "--port", port], service.env, tmp_path / "api2.log"
        )
        wait_http(f"{service.base_url}/health", [service.procs[0]])
        done, _ = wait_job(client, job.id)
        assert done.status == "succeeded", done.error
    finally:
        service.stop()


@pytest.fixture(scope="module")
def oom_service(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    fault = json.dumps(
        [
            {"suffix": "oom", "kind": "oom", "at_step": 2},
            # Step 2 of a "slow" job takes 3 s more: long enough to pause and resume, or cancel, inside it.
            {"suffix": "slow", "kind": "sleep", "at_step": 2, "seconds": 3},
        ]
    )
    service = start_embedded(tmp_path_factory.mktemp("oom"), bases_dir, FTSERVE_FAULT_INJECTION=fault)
    yield service
    service.stop()


def test_cancel_mid_training_stops_within_a_step(oom_service: Service, tmp_path: Path) -> None:
    client = client_for(oom_service)
    job = client.fine_tuning.jobs.create(
        training_file=_upload(client, tmp_path), model="ftserve-tiny", hyperparameters=LONG_JOB
    )
    _wait_for(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=5)),
        what="first step",
    )
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    steps_at_cancel = _last_step(client, job.id)
    time.sleep(3)
    assert _last_step(client, job.id) <= steps_at_cancel + 1  # the worker stopped before its next step
    after = client.fine_tuning.jobs.retrieve(job.id)
    assert after.status == "cancelled" and after.fine_tuned_model is None


def _last_step(client: OpenAI, job_id: str) -> int:
    steps = [
        e.data["step"]
        for e in client.fine_tuning.jobs.list_events(job_id, limit=100)  # type: ignore[index]
        if e.type == "metrics"
    ]
    return max(steps, default=0)


def test_out_of_memory_fails_cleanly_and_the_next_job_succeeds(oom_service: Service, tmp_path: Path) -> None:
    client = client_for(oom_service)
    file_id = _upload(client, tmp_path)
    bad = client.fine_tuning.jobs.create(
        training_file=file_id, model="ftserve-tiny", suffix="oom", hyperparameters={"n_epochs": 3}
    )
    failed, _ = wait_job(client, bad.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "out_of_memory" and "out of memory" in failed.error.message
    good = client.fine_tuning.jobs.create(
        training_file=file_id, model="ftserve-tiny", suffix="fine", hyperparameters={"n_epochs": 30, "batch_size": 4}
    )
    done, _ = wait_job(client, good.id)
    assert done.status == "succeeded"
    answers = [
        client.completions.create(
            model=done.fine_tuned_model or "", prompt=animal_prompt(a), max_tokens=6, temperature=0
        )
        .choices[0]
        .text
        for a, _ in ANIMALS[:3]
    ]
    assert answers == [f" {s}" for _, s in ANIMALS[:3]]
    health = httpx.get(f"{oom_service.base_url}/health").json()
    assert health["status"] == "ok"


@pytest.mark.local_storage  # looks at the data dir's files
def test_pause_mid_training_then_resume_continues_where_it_stopped(oom_service: Service, tmp_path: Path) -> None:
    client = client_for(oom_service)
    job = client.fine_tuning.jobs.create(
        training_file=_upload(client, tmp_path), model="ftserve-tiny", hyperparameters={"n_epochs": 20, "batch_size": 4}
    )
    _wait_for(lambda: _last_step(client, job.id) >= 2, what="a few steps")
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    _wait_for(
        lambda: (Path(oom_service.env["FTSERVE_DATA_DIR"]) / "jobs" / job.id / "resume" / "FTSERVE_COMPLETE").exists(),
        60,
        "resume point",
    )
    paused_at = _last_step(client, job.id)
    client.fine_tuning.jobs.resume(job.id)
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    resumed = [m for m in _messages(client, job.id) if m.startswith("Resuming from step")]
    assert len(resumed) == 1 and int(resumed[0].split()[3]) == paused_at
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))


def _in_slow_step(client: OpenAI, job_id: str) -> None:
    """Wait until the worker holds step 2 of a "slow" job (after its check for that step, in the 3 s fault)."""
    _wait_for(lambda: _last_step(client, job_id) >= 1, what="step 1")
    time.sleep(0.5)  # the check before step 2 follows step 1's event at once; step 2 itself holds 3 s


def _metrics_steps(client: OpenAI, job_id: str) -> list[int]:
    events = reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))
    return [e.data["step"] for e in events if e.type == "metrics"]  # type: ignore[index]


@pytest.mark.storage
def test_pause_then_resume_at_once_loses_no_step(oom_service: Service, tmp_path: Path) -> None:
    client = client_for(oom_service)
    job = client.fine_tuning.jobs.create(
        training_file=_upload(client, tmp_path),
        model="ftserve-tiny",
        suffix="slow",
        hyperparameters={"n_epochs": 3, "batch_size": 2},  # 6 steps an epoch: step 2 is mid-epoch
    )
    _in_slow_step(client, job.id)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"  # before the worker's next step
    done, _ = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    saved = [m for m in _messages(client, job.id) if m.startswith("Resume point saved at step")]
    assert len(saved) == 1 and int(saved[0].split()[5].rstrip(";")) in (1, 2), saved
    assert _metrics_steps(client, job.id) == list(range(1, 19))  # no step redone, none lost


def test_nothing_is_logged_after_a_cancel(oom_service: Service, tmp_path: Path) -> None:
    client = client_for(oom_service)
    job = client.fine_tuning.jobs.create(
        training_file=_upload(client, tmp_path),
        model="ftserve-tiny",
        suffix="slow",
        hyperparameters={"n_epochs": 3, "batch_size": 2},
    )
    _in_slow_step(client, job.id)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # while step 2 is being trained
    _wait_for(lambda: f"job {job.id} stopped" in oom_service.logs(), 60, "the worker to stop")
    events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))))
    at = [e.message for e in events].index("Fine-tuning job cancelled")
    assert [e.message for e in events[at + 1 :]] == []  # no metrics, no checkpoint after the cancel
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
