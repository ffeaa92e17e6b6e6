"""The reaper against a real Redis broker: a queued job whose message waits in the queue, or sits delivered
with a live worker, is not re-sent; one whose message the broker lost is, once. And a database outage seen
by the reaper gives workers a lease to come back, and costs the job no attempt."""

from __future__ import annotations

import time

import pytest
import redis

from ftserve.control.broker import TRAIN_QUEUE, celery_for
from ftserve.control.services.queue import enqueue_training, held_job_ids
from ftserve.control.services.reaper import DbWatch, reap_once
from ftserve.core.config import Settings
from tests.jobrows import job_row, make_job


@pytest.fixture()
def on_redis(settings: Settings, redis_url: str) -> Settings:
    settings.broker_url = redis_url
    return settings


def _queued(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.broker_url or "").llen(TRAIN_QUEUE))


def test_a_job_waiting_for_a_busy_worker_is_not_re_sent(on_redis: Settings) -> None:
    settings = on_redis
    stale = time.time() - settings.requeue_after_seconds - 5
    job_id = make_job(settings, "queued", enqueued_at=stale)
    assert enqueue_training(settings, job_id)  # the message waits: every worker is busy
    assert held_job_ids(settings, time.time() - 60) == {job_id}
    for _ in range(3):
        assert reap_once(settings).resent == []
    assert _queued(settings) == 1  # no duplicate to be delivered as a no-op later

    # A worker takes the message and has not acknowledged it yet (it is about to claim): still held.
    with celery_for(settings).connection_for_read() as conn:
        message = conn.default_channel.basic_get(TRAIN_QUEUE, no_ack=False)
        assert message is not None and _queued(settings) == 0
        assert reap_once(settings).resent == []
        # ...but a delivery older than requeue_after_seconds to a worker that never claimed it: lost.
        client = conn.default_channel.client
        client.zadd(conn.default_channel.unacked_index_key, {message.delivery_tag: stale})
        assert reap_once(settings).resent == [job_id]
        assert _queued(settings) == 1
        # (closing this connection cleanly hands the unacknowledged message back; a dead worker's does not)


def test_a_message_the_broker_lost_is_re_sent_once(on_redis: Settings) -> None:
    settings = on_redis
    job_id = make_job(settings, "queued", enqueued_at=time.time() - settings.requeue_after_seconds - 5)
    assert held_job_ids(settings, 0) == set()  # Redis restarted without persistence: the message is gone
    assert reap_once(settings).resent == [job_id]
    assert reap_once(settings).resent == []  # re-sent recently: wait for a worker
    assert _queued(settings) == 1


def test_a_database_outage_gives_leases_a_grace_period_and_costs_no_attempt(settings: Settings) -> None:
    settings.lease_seconds = 10
    watch = DbWatch()
    t0 = time.time()
    reap_once(settings, now=t0, watch=watch)
    job_id = make_job(settings, "running", lease_owner="w:1", lease_expires_at=t0 + 10, attempts=1)
    watch.unreachable(t0 + 1)  # the reaper's passes fail from here...
    back = t0 + 30  # ...until the database is back, long after the lease ran out
    assert reap_once(settings, now=back, watch=watch).requeued == []  # the worker gets a lease to renew
    assert reap_once(settings, now=back + 9, watch=watch).requeued == []
    assert reap_once(settings, now=back + 11, watch=watch).requeued == [job_id]  # it never came back
    job = job_row(settings, job_id)
    assert (job.status, job.worker_losses) == ("queued", 0)  # lost during the outage: not counted

    # A worker that dies with the database up is counted as before.
    lost = make_job(settings, "running", lease_owner="w:2", lease_expires_at=back + 12, attempts=1)
    assert reap_once(settings, now=back + 30, watch=watch).requeued == [lost]
    assert job_row(settings, lost).worker_losses == 1
