"""The torchrun supervisor: a worker that owns several devices (FTSERVE_WORKER_PROCS) claims a job, then
trains it as a torchrun gang (torch.distributed.run, c10d rendezvous, max_restarts=0) while it renews the
job's lease; rank 0 writes under this claim. A gang that dies (a rank killed) hands the job back at once: its
lease ends, the reaper requeues it as a lost worker, and the next claim resumes from the newest checkpoint."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from app.config import Settings
from app.services.training_store import JobSpec, JobStopped, TrainingStore
from training import pipeline
from training.errors import classify
from training.gang_entry import ATTEMPT_ENV, DIR_ENV, OWNER_ENV, SETTINGS_FILE, SPEC_FILE

log = logging.getLogger(__name__)


def run_job(job_id: str, settings: Settings) -> None:
    """Train one job: in this process on one device, else as a gang of worker_procs × job_hosts processes."""
    if settings.worker_procs == 1 and settings.job_hosts == 1:
        pipeline.run_job(job_id, settings)
        return
    store = TrainingStore(settings, job_id)
    spec = store.claim()
    if spec is None:
        log.info("job %s is not queued; nothing to do", job_id)
        return
    log.info("job %s claimed by %s (attempt %d, base %s)", job_id, store.owner, spec.attempt, spec.base)
    store.start_heartbeat()
    try:
        if spec.method != "supervised":
            # DPO's loss is a mean over pairs with a reference pass per pair; it is not split across ranks yet.
            store.event(f"{spec.method} jobs train in one process; the gang trains supervised jobs", level="warn")
            pipeline.run_claimed(spec, settings, store)
            return
        _supervise(spec, settings, store)
    finally:
        store.stop_heartbeat()


def _supervise(spec: JobSpec, settings: Settings, store: TrainingStore) -> None:
    procs, hosts = settings.worker_procs, settings.job_hosts
    try:
        store.event(
            f"Training as a torchrun gang of {procs * hosts} processes ({procs} per host on {hosts} "
            f"host{'s' if hosts > 1 else ''})",
            data={"processes": procs * hosts, "hosts": hosts, "processes_per_host": procs},
        )
        rc = launch(spec, settings, store.owner, hosts, None)
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


def _die_with_parent() -> None:
    """In the torchrun child before exec: SIGTERM it when the supervisor dies (even by SIGKILL), so a gang never
    trains on for a worker that is gone (torchrun stops its ranks on SIGTERM)."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(spec: JobSpec, settings: Settings, owner: str, hosts: int, endpoint: str | None) -> int:
    """Run this host's part of the job's gang (worker_procs processes) to the end; torchrun's exit code.
    One host: a standalone rendezvous; several: c10d at `endpoint` (the claiming worker's)."""
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
                f"--rdzv-conf=join_timeout={int(settings.gang_timeout_seconds)}",
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
            "training.gang_entry",
        ]
        env = {**os.environ, DIR_ENV: str(folder), OWNER_ENV: owner, ATTEMPT_ENV: str(spec.attempt)}
        log.info("job %s: %s", spec.id, " ".join(command))
        proc = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:  # the supervisor itself is stopping: take the gang down with it
                proc.terminate()
                proc.wait(timeout=30)
