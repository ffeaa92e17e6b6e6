"""Celery configuration for long training tasks; imports no torch so the api can enqueue with it."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app.config import Settings, get_settings

RUN_JOB = "ftserve.run_job"
TRAIN_QUEUE = "ftserve.train"


def make_celery(settings: Settings) -> Celery:
    broker = settings.resolved_broker_url()
    app = Celery("ftserve", broker=broker)
    transport_options: dict[str, object] = {
        # A training job can run for hours: Redis must not hand an unacked job to a second worker
        # while the first is still training. The DB lease (not this timeout) detects dead workers.
        "visibility_timeout": 7 * 24 * 3600,
    }
    if broker.startswith("filesystem"):
        folder = settings.broker_folder()
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
        task_default_queue=TRAIN_QUEUE,
        task_routes={RUN_JOB: {"queue": TRAIN_QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        # A task must never be killed by a time limit mid-checkpoint; cancellation goes through the DB.
        task_time_limit=None,
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


# The `celery -A worker.celery_app worker` entry point finds this attribute.
celery = get_celery()
celery.conf.imports = ("worker.tasks",)
