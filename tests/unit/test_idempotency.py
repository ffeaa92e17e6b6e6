"""Idempotency-Keys on a real SQLite DB: replayed while fresh, released when expired, purged by the reaper."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import IdempotencyKey
from ftserve.control.services import idempotency
from ftserve.control.services.reaper import reap_once
from ftserve.core.config import Settings
from ftserve.core.errors import Conflict
from ftserve.core.ids import now

ORG, PATH = "org-1", "/v1/fine_tuning/jobs"


class Result(BaseModel):
    id: str


def _age(settings: Settings, key: str, seconds: float) -> None:
    with session_scope(settings) as s:
        row = s.get(IdempotencyKey, (ORG, key))
        assert row is not None
        row.created_at = now() - int(seconds)
        s.commit()


def test_a_finished_key_replays_until_it_expires(settings: Settings) -> None:
    with session_scope(settings) as s:
        assert idempotency.begin(s, settings, ORG, "k1", PATH) is None
        idempotency.finish(s, ORG, "k1", Result(id="first"))
        assert idempotency.begin(s, settings, ORG, "k1", PATH) == {"id": "first"}
    _age(settings, "k1", settings.idempotency_ttl_seconds - 60)
    with session_scope(settings) as s:
        assert idempotency.begin(s, settings, ORG, "k1", PATH) == {"id": "first"}
    _age(settings, "k1", settings.idempotency_ttl_seconds + 60)
    with session_scope(settings) as s:
        assert idempotency.begin(s, settings, ORG, "k1", PATH) is None  # a new request, reserved afresh
        row = s.get(IdempotencyKey, (ORG, "k1"))
        assert row is not None and row.status_code == idempotency.IN_PROGRESS


def test_an_unfinished_key_is_released_after_its_shorter_limit(settings: Settings) -> None:
    with session_scope(settings) as s:
        assert idempotency.begin(s, settings, ORG, "k2", PATH) is None
        with pytest.raises(Conflict) as err:
            idempotency.begin(s, settings, ORG, "k2", PATH)
        assert err.value.code == "idempotency_key_in_progress"
        assert err.value.retry_after == idempotency.RETRY_SOON_SECONDS  # the first request may finish any moment
    _age(settings, "k2", 600)
    with session_scope(settings) as s, pytest.raises(Conflict) as err:
        idempotency.begin(s, settings, ORG, "k2", PATH)
    # stuck for 10 minutes: say so, and how long the key stays held (Retry-After), not "retry shortly"
    left = settings.idempotency_in_progress_seconds - 600
    assert err.value.retry_after is not None and abs(err.value.retry_after - left) <= 2
    message = err.value.message
    assert "has not finished" in message and f"held for {int(err.value.retry_after)} s more" in message
    _age(settings, "k2", settings.idempotency_in_progress_seconds + 60)
    with session_scope(settings) as s:
        assert idempotency.begin(s, settings, ORG, "k2", PATH) is None


def test_the_reaper_purges_only_expired_keys(settings: Settings) -> None:
    with session_scope(settings) as s:
        for key in ("old-done", "new-done", "old-stuck"):
            idempotency.begin(s, settings, ORG, key, PATH)
        idempotency.finish(s, ORG, "old-done", Result(id="a"))
        idempotency.finish(s, ORG, "new-done", Result(id="b"))
    _age(settings, "old-done", settings.idempotency_ttl_seconds + 1)
    _age(settings, "new-done", settings.idempotency_in_progress_seconds + 60)  # finished: kept for the full TTL
    _age(settings, "old-stuck", settings.idempotency_in_progress_seconds + 60)
    assert reap_once(settings).keys_purged == 2
    with session_scope(settings) as s:
        assert [k.key for k in s.query(IdempotencyKey).all()] == ["new-done"]
