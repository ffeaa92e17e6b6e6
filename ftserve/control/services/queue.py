"""Enqueue training after the job is committed (the task carries only the job id), and ask the broker
which jobs' messages it still holds, so the reaper re-sends only what was lost."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

from ftserve.control.broker import RUN_JOB, TRAIN_QUEUE, celery_for
from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Job
from ftserve.control.services import catalog
from ftserve.core.config import Settings
from ftserve.core.errors import NotFound

log = logging.getLogger(__name__)


def queue_of(settings: Settings, job_id: str) -> str:
    """The training queue of a job's base (a job whose model is gone goes to the default queue and fails there)."""
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None:
            return TRAIN_QUEUE
        try:
            base = catalog.resolve(s, settings, job.org_id, job.model).base
        except NotFound:
            return TRAIN_QUEUE
    return settings.base_models[base].queue


def enqueue_training(settings: Settings, job_id: str, queue: str | None = None) -> bool:
    """Send run_job(job_id) to its base's queue; False if the broker refused (the reaper re-sends queued jobs)."""
    try:
        queue = queue or queue_of(settings, job_id)
        celery_for(settings).send_task(RUN_JOB, args=[job_id], queue=queue, retry=True, retry_policy={"max_retries": 3})
    except Exception:
        log.exception("could not enqueue job %s; it stays queued for the reaper", job_id)
        return False
    return True


def held_job_ids(settings: Settings, delivered_since: float) -> set[str] | None:
    """Jobs whose run_job message the broker still holds: waiting in the training queue, or delivered at or
    after `delivered_since` (epoch seconds) to a worker that has not acknowledged it yet. None when the
    broker cannot tell (an unknown transport, or it is unreachable): the caller should assume lost."""
    try:
        with celery_for(settings).connection_for_read() as conn:
            channel: Any = conn.default_channel
            if hasattr(channel, "unacked_key"):  # kombu's Redis transport
                return _ids(_redis_messages(channel, settings.training_queues(), delivered_since))
            if hasattr(channel, "data_folder_in"):  # the embedded filesystem transport: no unacked state
                return _ids(_folder_messages(Path(channel.data_folder_in), settings.training_queues()))
    except Exception:
        log.warning("could not inspect the broker's queue", exc_info=True)
    return None


def _redis_messages(channel: Any, queues: list[str], delivered_since: float) -> list[Any]:
    client = channel.client
    raws: list[Any] = []
    for queue in queues:
        for priority in channel.priority_steps:
            raws.extend(json.loads(r) for r in client.lrange(channel._q_for_pri(queue, priority), 0, -1))
    # kombu keeps a delivered, unacknowledged message in a hash, indexed by delivery time.
    tags = client.zrangebyscore(channel.unacked_index_key, delivered_since, "+inf")
    if tags:
        for held in client.hmget(channel.unacked_key, tags):
            if held is not None:
                raws.append(json.loads(held)[0])  # [message, exchange, routing key]
    return raws


def _folder_messages(folder: Path, queues: list[str]) -> list[Any]:
    raws = []
    for path in (p for queue in queues for p in folder.glob(f"*.{queue}.msg")):
        try:
            raws.append(json.loads(path.read_bytes()))
        except (FileNotFoundError, ValueError):
            continue  # taken by a worker meanwhile, or not a message
    return raws


def _ids(messages: list[Any]) -> set[str]:
    out = set()
    for message in messages:
        job_id = _job_id(message)
        if job_id:
            out.add(job_id)
    return out


def _job_id(message: Any) -> str | None:
    """The job id a run_job message carries (Celery protocol 2: body = [args, kwargs, embed])."""
    try:
        if (message.get("headers") or {}).get("task") != RUN_JOB:
            return None
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
