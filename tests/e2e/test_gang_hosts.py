"""One job across two worker hosts (network namespaces, sharing no disk; Postgres, Redis and S3 over the
bridge): the worker that claims it publishes its rendezvous endpoint, the other host's worker joins, and the
gang of 2 (one process per host, gloo) trains the job with the same per-step losses as one process."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from tests.e2e.conftest import write_prompt_completion
from tests.e2e.test_multihost import Cluster, _start, _until, cluster  # noqa: F401 - the fixture
from tests.servers import FTSERVE, Proc, base_env, free_port, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.local_storage]  # the cluster makes its own S3 store
HP = {"n_epochs": 2, "batch_size": 4}


def _losses(client: OpenAI, job_id: str) -> list[float]:
    events = reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))
    return [float(e.data["train_loss"]) for e in events if e.type == "metrics" and e.data]


def test_two_hosts_form_one_gang_with_the_losses_of_one_process(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    net = cluster.net
    w1, w2 = net.add_host("g1"), net.add_host("g2")
    api_data = tmp_path / "api"
    api_data.mkdir()
    api_env = base_env(api_data, api_data / "bases", **cluster.env)
    port = free_port()
    procs = [Proc([*FTSERVE, "api", "--port", str(port)], api_env, api_data / "api.log")]
    try:
        wait_http(f"http://127.0.0.1:{port}/health", procs)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
        training = write_prompt_completion(tmp_path / "t.jsonl").open("rb")
        file_id = client.files.create(file=training, purpose="fine-tune").id
        gang = {"FTSERVE_JOB_HOSTS": "2", "FTSERVE_GANG_TIMEOUT_SECONDS": "120"}
        for host, name in ((w1, "g1"), (w2, "g2")):
            procs.append(_start(cluster, host, ["worker", "--name", name], name, FTSERVE_GANG_ADDRESS=host.ip, **gang))
        job = client.fine_tuning.jobs.create(training_file=file_id, model="ftserve-tiny", seed=3, hyperparameters=HP)
        _until(lambda: client.fine_tuning.jobs.retrieve(job.id).status in ("succeeded", "failed"), 400, procs[1])
        done = client.fine_tuning.jobs.retrieve(job.id)
        assert done.status == "succeeded", (done.error, procs[1].output()[-3000:], procs[2].output()[-3000:])
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert "Training as a torchrun gang of 2 processes (1 per host on 2 hosts)" in messages, messages
        assert any(m.startswith("Waiting for 1 more worker host to join the gang at 10.77.") for m in messages)
        assert done.model_extra is not None and done.model_extra.get("gang") == {"processes": 2, "hosts": 2}
        joined = [p for p in procs[1:] if "joining the gang at" in p.output()]
        assert len(joined) == 1  # the other host's worker took the join request and ran its part
        for p in procs[1:]:
            p.stop()
        del procs[1:]

        # The same job (seed, file, hyperparameters) on one host, one process.
        procs.append(_start(cluster, w1, ["worker", "--name", "solo"], "solo"))
        again = client.fine_tuning.jobs.create(training_file=file_id, model="ftserve-tiny", seed=3, hyperparameters=HP)
        _until(lambda: client.fine_tuning.jobs.retrieve(again.id).status in ("succeeded", "failed"), 300, procs[1])
        assert client.fine_tuning.jobs.retrieve(again.id).status == "succeeded"
        one, two = _losses(client, again.id), _losses(client, job.id)
        assert len(one) == len(two) == 6
        assert two == pytest.approx(one, rel=1e-4)
    finally:
        for proc in reversed(procs):
            proc.stop()
