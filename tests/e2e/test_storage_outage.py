"""The object store goes away mid-job: the worker retries with backoff, then fails the job with a clear
code; the last complete checkpoint is still in the store when it comes back, and still serves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ANIMALS, animal_prompt, client_for, wait_job, write_prompt_completion
from tests.s3server import S3Server, make_bucket, start_swift
from tests.servers import Service, free_port, start_embedded

pytestmark = pytest.mark.local_storage  # it makes (and breaks) its own S3 store
SUFFIX = "outage"


@pytest.fixture()
def swift(tmp_path: Path) -> Iterator[S3Server]:
    server = start_swift(tmp_path / "swift", "127.0.0.1", free_port())
    make_bucket(server, "outage")
    yield server
    server.stop()


@pytest.fixture()
def service(tmp_path: Path, bases_dir: Path, swift: S3Server) -> Iterator[Service]:
    # Step 5 is held a few seconds: long enough for the test to take the store away after epoch 1's checkpoint.
    slow = json.dumps({"suffix": SUFFIX, "kind": "sleep", "at_step": 5, "seconds": 4})
    (tmp_path / "data").mkdir()
    service = start_embedded(
        tmp_path / "data",
        bases_dir,
        FTSERVE_STORAGE_URL="s3://outage/deployment",
        FTSERVE_FAULT_INJECTION=slow,
        AWS_MAX_ATTEMPTS="2",
        **swift.env(),
    )
    yield service
    service.stop()


def test_a_store_outage_fails_the_job_clearly_and_keeps_its_last_checkpoint(
    service: Service, swift: S3Server, tmp_path: Path
) -> None:
    client = client_for(service)
    uploaded = client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model="ftserve-tiny",
        suffix=SUFFIX,
        seed=3,
        hyperparameters={"n_epochs": 40, "batch_size": 4},
    )
    deadline = time.monotonic() + 120
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:  # epoch 1's checkpoint (step 3) is stored
        assert time.monotonic() < deadline, service.logs()
        time.sleep(0.2)
    swift.stop()  # while step 5 is held: the next checkpoint (step 6) cannot be written
    done, _ = wait_job(client, job.id, timeout=300)
    assert done.status == "failed" and done.error is not None, done
    assert done.error.code == "storage_unavailable"
    assert "s3://outage/deployment" in done.error.message

    swift.restart()
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [3]
    model = checkpoints[0].fine_tuned_model_checkpoint
    reply = client.completions.create(model=model, prompt=animal_prompt(ANIMALS[0][0]), max_tokens=4, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length")  # the adapter is complete and loads
