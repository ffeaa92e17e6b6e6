"""Queues by capability: each base in the registry names the queue its jobs go to, and a worker takes jobs
only from the queues it names (`ftserve worker --queues …`), so a small host never gets a big base's job."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import client_for, wait_job, write_prompt_completion
from tests.servers import FTSERVE, Proc, Service, start_distributed

TINY = {"source": "tiny", "dtype": "float32", "base_learning_rate": 0.01, "max_seq_len": 512}
REGISTRY = json.dumps({"ftserve-tiny": TINY, "tiny-big": {**TINY, "queue": "big-gpu"}})


@pytest.fixture()
def service(tmp_path: Path, bases_dir: Path, postgres_url: str, redis_url: str) -> Iterator[Service]:
    # The api, and one worker on the default queue only.
    service = start_distributed(tmp_path, bases_dir, postgres_url, redis_url, FTSERVE_BASE_MODELS=REGISTRY)
    yield service
    service.stop()


def test_a_job_waits_for_a_worker_of_its_bases_queue(service: Service, tmp_path: Path) -> None:
    client = client_for(service)
    uploaded = client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune")
    small = client.fine_tuning.jobs.create(
        training_file=uploaded.id, model="ftserve-tiny", hyperparameters={"n_epochs": 1}
    )
    big = client.fine_tuning.jobs.create(training_file=uploaded.id, model="tiny-big", hyperparameters={"n_epochs": 1})
    done, _ = wait_job(client, small.id)
    assert done.status == "succeeded", done.error
    time.sleep(3)  # the default-queue worker is idle now, and still must not take the big base's job
    assert client.fine_tuning.jobs.retrieve(big.id).status == "queued"
    assert f"job {small.id} claimed" in service.procs[1].output()  # the worker logs each job it takes…
    assert f"job {big.id} claimed" not in service.procs[1].output()  # …and it never took the big one

    log = tmp_path / "big-worker.log"
    big_worker = Proc([*FTSERVE, "worker", "--name", "big", "--queues", "big-gpu"], service.env, log)
    try:
        done, _ = wait_job(client, big.id)
        assert done.status == "succeeded", done.error
        assert f"job {big.id} claimed" in big_worker.output()
    finally:
        big_worker.stop()
