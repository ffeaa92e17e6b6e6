"""Past one machine: two worker hosts and an inference host that share no disk, each in its own network
namespace with its own empty data directory, reaching Postgres, Redis and a real S3 server (Swift) only over
veth links. A job trains on one worker host; that host's worker is SIGKILLed mid-job; the other host resumes
from the checkpoint in the object store and finishes; the inference host fetches the new adapter from the
store and its greedy answers reproduce the training completions."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from tests.e2e.conftest import ANIMALS, animal_prompt, wait_job, write_prompt_completion
from tests.hosts import Host, Network, available
from tests.s3server import S3Server, make_bucket, start_swift
from tests.servers import FTSERVE, Proc, base_env, free_port, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.local_storage]  # it makes its own S3 store
SUFFIX = "multihost"


@dataclass
class Cluster:
    net: Network
    s3: S3Server
    env: dict[str, str]  # what every host's processes get (the root namespace's api too, with loopback URLs)
    host_env: dict[str, str]
    root: Path


@pytest.fixture()
def cluster(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Cluster]:
    why = available()
    if why is not None:
        pytest.fail(f"network namespaces are needed for this test: {why}")
    net = Network().up()
    s3: S3Server | None = None
    try:
        net.forward(5432)  # Postgres and Redis listen on loopback only: relay them to the bridge address
        net.forward(6379)
        s3 = start_swift(tmp_path / "swift", net.gateway, free_port())
        make_bucket(s3, "ftserve-hosts")
        common = {
            **s3.env(),
            "FTSERVE_STORAGE_URL": "s3://ftserve-hosts/deployment",
            "FTSERVE_LEASE_SECONDS": "6",
            "FTSERVE_HEARTBEAT_SECONDS": "1",
            "FTSERVE_REAPER_INTERVAL_SECONDS": "1",
            "FTSERVE_CHECKPOINTS_KEEP": "10",
        }
        env = {**common, "FTSERVE_DATABASE_URL": postgres_url, "FTSERVE_BROKER_URL": redis_url}
        hosts = {
            "FTSERVE_DATABASE_URL": postgres_url.replace("127.0.0.1", net.gateway),
            "FTSERVE_BROKER_URL": redis_url.replace("127.0.0.1", net.gateway),
        }
        yield Cluster(net, s3, env, {**common, **hosts}, tmp_path)
    finally:
        if s3 is not None:
            s3.stop()
        net.down()


def _start(cluster: Cluster, host: Host, role: list[str], name: str, **extra: str) -> Proc:
    """A role on a host: its own empty data dir and bases dir (the tiny base is built there on first use)."""
    data = cluster.root / name
    data.mkdir()
    env = base_env(data, data / "bases", **cluster.host_env, **extra)
    return host.start([*FTSERVE, *role], env, data / "role.log")


def test_a_job_survives_its_worker_host_and_is_served_from_the_store(cluster: Cluster, tmp_path: Path) -> None:
    net = cluster.net
    w1, w2, inference_host = net.add_host("w1"), net.add_host("w2"), net.add_host("inf")
    # Namespaced hosts see nothing of the machine's loopback: the only way out is the bridge.
    probe = "import socket,sys; s=socket.socket(); s.settimeout(2); sys.exit(s.connect_ex(('127.0.0.1', 5432)))"
    assert w1.run([FTSERVE[0], "-c", probe]).returncode != 0

    api_data = tmp_path / "api"
    api_data.mkdir()
    api_env = base_env(api_data, api_data / "bases", **cluster.env)
    key = subprocess.run(
        [*FTSERVE, "keys", "create", "--org", "hosts"], env=api_env, capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_port()
    api = Proc([*FTSERVE, "api", "--port", str(port)], api_env, api_data / "api.log")
    procs = [api]
    try:
        wait_http(f"http://127.0.0.1:{port}/health", [api])
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120)
        training = write_prompt_completion(tmp_path / "t.jsonl")
        uploaded = client.files.create(file=training.open("rb"), purpose="fine-tune")
        # The first worker host holds step 8 long enough to be killed mid-job, after two epoch checkpoints.
        slow = json.dumps({"suffix": SUFFIX, "kind": "sleep", "at_step": 8, "seconds": 120})
        first = _start(cluster, w1, ["worker", "--name", "w1"], "w1", FTSERVE_FAULT_INJECTION=slow)
        procs.append(first)
        job = client.fine_tuning.jobs.create(
            training_file=uploaded.id,
            model="ftserve-tiny",
            suffix=SUFFIX,
            seed=5,
            hyperparameters={"n_epochs": 30, "batch_size": 4},
        )

        def steps() -> list[int]:
            events = client.fine_tuning.jobs.list_events(job.id, limit=100)
            return [int(e.data["step"]) for e in events if e.type == "metrics" and e.data]

        _until(lambda: 7 in steps(), 180, first)  # two epoch checkpoints (steps 3 and 6) are in the store
        assert max(steps()) == 7  # held at step 8 on the first host
        second = _start(cluster, w2, ["worker", "--name", "w2"], "w2")
        procs.append(second)
        first.stop(signal.SIGKILL)

        done, _ = wait_job(client, job.id, timeout=600)
        assert done.status == "succeeded", (done.error, first.output(), second.output())
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any(m.startswith("Resuming from step 6") for m in messages), messages
        # The second host never saw the first one's disk: everything it used came from the store.
        assert not (cluster.root / "w2" / "jobs").exists()

        inf_port = free_port()
        serving = _start(
            cluster, inference_host, ["inference", "--host", inference_host.ip, "--port", str(inf_port)], "inf"
        )
        procs.append(serving)
        wait_http(f"http://{inference_host.ip}:{inf_port}/health", [serving])
        served = OpenAI(base_url=f"http://{inference_host.ip}:{inf_port}/v1", api_key=key, max_retries=0)
        for animal, sound in ANIMALS:
            reply = served.completions.create(
                model=done.fine_tuned_model or "", prompt=animal_prompt(animal), max_tokens=8, temperature=0
            )
            assert reply.choices[0].text == f" {sound}"
        cached = cluster.root / "inf" / "cache" / "jobs" / job.id / "final"
        assert (cached / "adapter_model.safetensors").is_file()  # fetched from the store, kept in the cache
    finally:
        for proc in reversed(procs):
            proc.stop()


def _until(check: object, timeout: float, watched: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not watched.alive():
            raise AssertionError(f"process exited:\n{watched.output()}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise TimeoutError(f"condition not met in {timeout}s:\n{watched.output()}")
