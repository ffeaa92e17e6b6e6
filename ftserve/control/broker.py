"""The Celery app for long training tasks; imports no torch, so the api can enqueue with it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from celery import Celery

from ftserve.core.config import Settings

RUN_JOB = "ftserve.run_job"
# Sent by a worker that claimed a multi-host job, once per other host it needs (worker/gang.py).
JOIN_JOB = "ftserve.join_job"
TRAIN_QUEUE = "ftserve.train"


def make_celery(broker: str, folder: Path) -> Celery:
    """A Celery app on `broker`; the embedded filesystem broker keeps its messages under `folder`."""
    app = Celery("ftserve", broker=broker)
    transport_options: dict[str, object] = {
        # A training job can run for hours: Redis must not hand an unacked job to a second worker
        # while the first is still training. The DB lease (not this timeout) detects dead workers.
        "visibility_timeout": 7 * 24 * 3600,
    }
    if broker.startswith("filesystem"):
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # Broadcast (pidbox) state; without this kombu writes ./control in the current directory.
            "control_folder": str(folder / "control"),
        }
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # Ack after the task returns, so a worker killed mid-job leaves the message to be redelivered.
        task_acks_late=True,
        # ...and if the worker process dies, reject (requeue) rather than ack the message.
        task_reject_on_worker_lost=True,
        # One job at a time per worker: never reserve a second long job behind the running one.
        worker_prefetch_multiplier=1,
        # The DB holds every result; a result backend would only duplicate it.
        task_ignore_result=True,
        # Each job is sent to its base's queue (the registry's `queue`, this one by default).
        task_default_queue=TRAIN_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        # A task must never be killed by a time limit mid-checkpoint; cancellation goes through the DB.
        task_time_limit=None,
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache
def _cached(broker: str, folder: Path) -> Celery:
    return make_celery(broker, folder)


def celery_for(settings: Settings) -> Celery:
    """One Celery app per broker, shared by every caller in the process."""
    return _cached(settings.resolved_broker_url(), settings.broker_folder())
