"""Through the API, on a worker that owns two processes (FTSERVE_WORKER_PROCS=2, gloo on CPU): a job trains as a
torchrun gang and succeeds; killing one rank mid-job fails the gang, the job is requeued and resumed; a gang whose
base is sharded (FTSERVE_GANG_SHARDING=fsdp) pauses together and resumes from rank 0's pause point."""

from __future__ import annotations

import csv
import io
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import animal_prompt, client_for, wait_job, write_prompt_completion
from tests.e2e.test_reliability import FAST_LEASE, _messages, _wait_for
from tests.servers import Service, start_distributed


@pytest.fixture(params=["none"])
def gang_service(
    request: pytest.FixtureRequest, tmp_path: Path, bases_dir: Path, postgres_url: str, redis_url: str
) -> Iterator[Service]:
    service = start_distributed(
        tmp_path,
        bases_dir,
        postgres_url,
        redis_url,
        FTSERVE_WORKER_PROCS="2",
        FTSERVE_GANG_SHARDING=request.param,
        **FAST_LEASE,
    )
    yield service
    service.stop()


def _ranks(service: Service) -> list[psutil.Process]:
    """The worker's gang processes (torchrun's children running training.gang_entry)."""
    worker = psutil.Process(service.procs[-1].proc.pid)
    ranks = []
    for p in worker.children(recursive=True):
        try:
            command = " ".join(p.cmdline())
        except psutil.Error:  # exited meanwhile (a zombie until torchrun reaps it)
            continue
        if "ftserve.worker.gang_entry" in command and "torch.distributed.run" not in command:
            ranks.append(p)
    return ranks


@pytest.mark.storage
def test_a_gang_of_two_trains_and_survives_a_killed_rank(gang_service: Service, tmp_path: Path) -> None:
    client = client_for(gang_service)
    file_id = client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        training_file=file_id, model="ftserve-tiny", hyperparameters={"n_epochs": 12, "batch_size": 4}
    )
    _wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, 240, "first checkpoint")
    ranks = _ranks(gang_service)
    assert len(ranks) == 2, [p.cmdline() for p in ranks]
    ranks[-1].send_signal(signal.SIGKILL)  # one rank dies mid-job; the other and torchrun stay

    done, _ = wait_job(client, job.id, timeout=400)
    assert done.status == "succeeded", (done.error, gang_service.logs()[-4000:])
    assert done.model_extra is not None and done.model_extra.get("gang") == {"processes": 2, "hosts": 1}
    messages = _messages(client, job.id)
    assert sum(m == "Training as a torchrun gang of 2 processes (2 per host on 1 host)" for m in messages) == 2
    assert any(m.startswith("The training gang stopped: torchrun exited with code") for m in messages), messages
    assert any("stopped responding; job re-queued (attempt 1 of 2)" in m for m in messages), messages
    assert sum(m.startswith("Resuming from step") for m in messages) == 1
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 37))  # 12 examples / 4 = 3 steps × 12 epochs, each once
    answer = client.completions.create(
        model=done.fine_tuned_model or "", prompt=animal_prompt("cow"), max_tokens=6, temperature=0
    )
    assert answer.choices[0].text == " moo"
    _wait_for(lambda: _ranks(gang_service) == [], 30, "the gang to exit")  # no rank outlives its job


def test_a_gang_that_cannot_be_completed_fails_cleanly(
    tmp_path: Path, bases_dir: Path, postgres_url: str, redis_url: str
) -> None:
    # The job needs two worker hosts; there is one, busy waiting for the other: the job fails in time.
    extra = {"FTSERVE_JOB_HOSTS": "2", "FTSERVE_GANG_TIMEOUT_SECONDS": "4", "FTSERVE_GANG_ADDRESS": "127.0.0.1"}
    service = start_distributed(tmp_path, bases_dir, postgres_url, redis_url, **extra)
    try:
        client = client_for(service)
        training = write_prompt_completion(tmp_path / "t.jsonl").open("rb")
        file_id = client.files.create(file=training, purpose="fine-tune").id
        job = client.fine_tuning.jobs.create(training_file=file_id, model="ftserve-tiny")
        done, _ = wait_job(client, job.id, timeout=120)
        assert done.status == "failed" and done.error is not None, done
        assert done.error.code == "gang_incomplete", done.error
        assert "Only 1 of the 2 worker hosts" in done.error.message
        messages = _messages(client, job.id)
        assert any(m.startswith("Waiting for 1 more worker host to join the gang at 127.0.0.1:") for m in messages)
        # The join request the worker sent itself finds the gang closed once it is free again: nothing runs.
        _wait_for(lambda: "its gang (attempt 1) is not open; nothing to join" in service.logs(), 30, "the join")
    finally:
        service.stop()


@pytest.mark.storage
@pytest.mark.parametrize("gang_service", ["fsdp"], indirect=True)  # the sharded gang's checkpoints, too
def test_a_gang_pauses_together_and_resumes_where_it_stopped(gang_service: Service, tmp_path: Path) -> None:
    client = client_for(gang_service)
    file_id = client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        training_file=file_id, model="ftserve-tiny", hyperparameters={"n_epochs": 20, "batch_size": 4}
    )
    _wait_for(lambda: any(m.startswith("Step 2/60") for m in _messages(client, job.id)), 240, "step 2")
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    _wait_for(lambda: any(m.startswith("Paused at step") for m in _messages(client, job.id)), 60, "the pause point")
    _wait_for(lambda: _ranks(gang_service) == [], 30, "every rank to stop")  # rank 0 told the others
    paused_at = int(next(m for m in _messages(client, job.id) if m.startswith("Paused at step")).split()[3].rstrip(";"))
    client.fine_tuning.jobs.resume(job.id)
    done, _ = wait_job(client, job.id, timeout=300)
    assert done.status == "succeeded", done.error
    resumed = [m for m in _messages(client, job.id) if m.startswith("Resuming from step")]
    assert len(resumed) == 1 and int(resumed[0].split()[3]) == paused_at
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))  # no step lost or redone across the pause
    assert sum(m.startswith("Sharded the base over 2 processes (FSDP)") for m in _messages(client, job.id)) == 2
