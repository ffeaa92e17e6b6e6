"""The torchrun supervisor: a worker that owns several devices (FTSERVE_WORKER_PROCS) claims a job, then
trains it as a torchrun gang (torch.distributed.run, c10d rendezvous, max_restarts=0) while it renews the
job's lease; rank 0 writes under this claim. A gang that dies (a rank killed) hands the job back at once: its
lease ends, the reaper requeues it as a lost worker, and the next claim resumes from the newest checkpoint.

Across hosts (FTSERVE_JOB_HOSTS): the claiming worker publishes its rendezvous endpoint through the DB and
sends one join_job per other host it needs; an idle worker that takes one joins with its own devices. The
gang starts when every host is in, and the job fails `gang_incomplete` when they are not in time."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from ftserve.control.broker import JOIN_JOB, TRAIN_QUEUE, celery_for
from ftserve.control.services.training_store import TrainingStore
from ftserve.core import methods
from ftserve.core.config import Settings
from ftserve.core.errors import TrainingError
from ftserve.training import pipeline
from ftserve.training.errors import classify
from ftserve.training.ports import JobSpec, JobStopped
from ftserve.worker.gang_entry import ATTEMPT_ENV, DIR_ENV, OWNER_ENV, SETTINGS_FILE, SPEC_FILE

log = logging.getLogger(__name__)


def run_job(job_id: str, settings: Settings) -> None:
    """Train one job: in this process on one device, else as a gang of worker_procs × job_hosts processes."""
    store = TrainingStore(settings, job_id)  # the control plane's store: training sees it as its port
    if settings.worker_procs == 1 and settings.job_hosts == 1:
        pipeline.run_job(store, settings)
    else:
        pipeline.run_job(store, settings, train=_train_claimed)


def _train_claimed(spec: JobSpec, settings: Settings, store: TrainingStore) -> None:
    """A claimed job (its lease renewed by the caller): as a gang if its method runs on one (sharded, if the
    gang shards its base), else in this process, with a warn event that says why."""
    sharded = settings.gang_sharding == "fsdp"
    if spec.method in methods.on_gang(sharded):
        _supervise(spec, settings, store)
        return
    method = methods.get(spec.method)
    why = f" when the gang shards its base (FSDP): {method.unsharded_because}" if method.runs_on_gang else ""
    gang_methods = " and ".join(methods.on_gang(sharded))
    try:
        store.event(f"{spec.method} jobs train in one process{why}; the gang trains {gang_methods} jobs", level="warn")
    except JobStopped as stop:
        log.info("job %s stopped: %s", spec.id, stop)
        return
    pipeline.run_claimed(spec, settings, store)


def join_job(job_id: str, attempt: int, settings: Settings) -> None:
    """Join claim `attempt`'s gang with this host's devices, if it still needs a host; run this host's part."""
    seat = TrainingStore(settings, job_id).join_gang(attempt)
    if seat is None:
        log.info("job %s: its gang (attempt %d) is not open; nothing to join", job_id, attempt)
        return
    log.info("job %s: joining the gang at %s (%d hosts)", job_id, seat.endpoint, seat.hosts)
    rc = launch(seat.spec, settings, seat.owner, seat.hosts, seat.endpoint)
    log.info("job %s: this host's part of the gang exited %d", job_id, rc)


def _address(settings: Settings) -> str:
    return settings.gang_address or socket.gethostbyname(socket.gethostname())


def _gather(spec: JobSpec, settings: Settings, store: TrainingStore) -> str:
    """Open the job's gang at this host's endpoint, ask for the other hosts, wait until all are in."""
    hosts = settings.job_hosts
    address = _address(settings)
    with socket.socket() as s:  # a free port for the c10d rendezvous store this host will serve
        s.bind((address, 0))
        endpoint = f"{address}:{s.getsockname()[1]}"
    store.open_gang(endpoint, hosts)
    base = settings.base_models.get(spec.base)
    queue = base.queue if base is not None else TRAIN_QUEUE
    for _ in range(hosts - 1):
        celery_for(settings).send_task(JOIN_JOB, args=[spec.id, spec.attempt], queue=queue)
    deadline = time.monotonic() + settings.gang_timeout_seconds
    while (joined := store.gang_members()) < hosts:
        if time.monotonic() > deadline:
            store.close_gang()
            raise TrainingError(
                "gang_incomplete",
                f"Only {joined} of the {hosts} worker hosts this job needs (FTSERVE_JOB_HOSTS) joined its gang "
                f"within {settings.gang_timeout_seconds:g} s: no other worker with free devices took it",
            )
        time.sleep(0.5)
    return endpoint


def _supervise(spec: JobSpec, settings: Settings, store: TrainingStore) -> None:
    procs, hosts = settings.worker_procs, settings.job_hosts
    try:
        endpoint = _gather(spec, settings, store) if hosts > 1 else None
        store.gang_started(
            procs * hosts,
            hosts,
            f"Training as a torchrun gang of {procs * hosts} processes ({procs} per host on {hosts} "
            f"host{'s' if hosts > 1 else ''})",
        )
        rc = launch(spec, settings, store.owner, hosts, endpoint, serve=True)
    except JobStopped as stop:
        log.info("job %s stopped: %s", spec.id, stop)
        return
    except Exception as exc:
        failure = classify(exc)
        log.exception("job %s failed: %s", spec.id, failure.code)
        store.fail(failure.code, failure.message, failure.param)
        return
    if rc != 0 and store.gang_lost(f"torchrun exited with code {rc} (a rank failed or was killed)"):
        log.warning("job %s: gang exited %d; the lease is released for the reaper to requeue it", spec.id, rc)


def _interface(address: str) -> str | None:
    """The network interface that holds `address`, if one of this host's does."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == address for a in addrs):
            return name
    return None


def _die_with_parent() -> None:
    """In the torchrun child before exec: SIGTERM it when the supervisor dies (even by SIGKILL), so a gang never
    trains on for a worker that is gone (torchrun stops its ranks on SIGTERM)."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(
    spec: JobSpec, settings: Settings, owner: str, hosts: int, endpoint: str | None, *, serve: bool = False
) -> int:
    """Run this host's part of the job's gang (worker_procs processes) to the end; torchrun's exit code.
    One host: a standalone rendezvous; several: c10d at `endpoint`, whose store the claiming host serves."""
    with tempfile.TemporaryDirectory(prefix=f"ftserve-gang-{spec.id}-") as tmp:
        folder = Path(tmp)
        (folder / SETTINGS_FILE).write_text(settings.model_dump_json())
        (folder / SPEC_FILE).write_text(spec.to_json())
        rendezvous = (
            ["--standalone"]
            if endpoint is None
            else [
                f"--nnodes={hosts}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                f"--rdzv-id={spec.id}-{spec.attempt}",
                f"--rdzv-conf=join_timeout={int(settings.gang_timeout_seconds)},is_host={str(serve).lower()}",
                # The address the others reach this host at: torchrun's master address when it is rank 0.
                f"--local-addr={_address(settings)}",
            ]
        )
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *rendezvous,
            f"--nproc-per-node={settings.worker_procs}",
            "--max-restarts=0",  # a dead rank fails the gang; the job is resumed by a new claim instead
            "--monitor-interval=0.5",
            "-m",
            "ftserve.worker.gang_entry",
        ]
        env = {**os.environ, DIR_ENV: str(folder), OWNER_ENV: owner, ATTEMPT_ENV: str(spec.attempt)}
        # torchrun gives each rank one thread unless told; on CPU the ranks share this host's cores instead.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // settings.worker_procs)))
        if endpoint is not None:
            interface = _interface(_address(settings))
            if interface is not None:  # gloo and nccl talk over the interface that holds the gang address
                env.setdefault("GLOO_SOCKET_IFNAME", interface)
                env.setdefault("NCCL_SOCKET_IFNAME", interface)
        log.info("job %s: %s", spec.id, " ".join(command))
        proc = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:  # the supervisor itself is stopping: take the gang down with it
                proc.terminate()
                proc.wait(timeout=30)
