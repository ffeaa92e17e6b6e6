"""FTSERVE_RESPONSES_RETENTION_DAYS on a real SQLite and Postgres database: a stored response past it reads as
deleted (retrieve, input_items, delete, and previous_response_id: the same 404 as a missing one), the orphan
sweep deletes it in every org and keeps the rest; 0 keeps everything."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ftserve.control.db.migrate import upgrade_head
from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import StoredResponse
from ftserve.control.services import orphans, response_store
from ftserve.control.services.response_store import SqlResponseStore
from ftserve.core.config import Settings
from ftserve.core.errors import NotFound
from ftserve.serving.ports import SavedResponse
from ftserve.serving.stored_responses import history

DAY = 86400


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    sqlite = f"sqlite:///{tmp_path / 'r.db'}"
    url = sqlite if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    upgrade_head(url)
    return url


def _settings(tmp_path: Path, url: str, days: float) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=url, responses_retention_days=days)


def _saved(rid: str, created: float) -> SavedResponse:
    body = {"id": rid, "object": "response", "created_at": int(created), "output": []}
    item = {"id": f"msg_{rid}", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    return SavedResponse(rid, int(created), body, [item], [])


def _not_found(call: object) -> NotFound:
    with pytest.raises(NotFound) as err:
        call()  # type: ignore[operator]
    return err.value


def test_retention_hides_then_the_sweep_deletes_expired_responses(tmp_path: Path, db_url: str) -> None:
    settings = _settings(tmp_path, db_url, days=30)
    store = SqlResponseStore(settings)
    now = time.time()
    store.save("a", _saved("resp_old", now - 31 * DAY))
    store.save("b", _saved("resp_old_b", now - 31 * DAY))
    store.save("a", _saved("resp_fresh", now - 29 * DAY))

    assert store.get("a", "resp_fresh").id == "resp_fresh"
    for call in (
        lambda: store.get("a", "resp_old"),
        lambda: store.input_items("a", "resp_old", None, 20, "desc"),
        lambda: store.delete("a", "resp_old"),
    ):
        assert _not_found(call).code == "response_not_found"
    # previous_response_id naming an expired response: the very 404 of one that never existed.
    expired = _not_found(lambda: history(store, "a", "resp_old"))
    missing = _not_found(lambda: history(store, "a", "resp_gone"))
    assert (expired.code, expired.param) == (missing.code, missing.param)
    assert (expired.code, expired.param) == ("response_not_found", "previous_response_id")
    assert expired.message == missing.message.replace("resp_gone", "resp_old")
    assert len(history(store, "a", "resp_fresh")) == 1

    with session_scope(settings) as s:
        report = orphans.sweep(s, settings, now)
    assert report.responses == 2 and report.total() == 2
    with session_scope(settings) as s:
        assert list(s.scalars(select(StoredResponse.id))) == ["resp_fresh"]
    # Still there a day later by the setting's clock; gone from the sweep once past it.
    with session_scope(settings) as s:
        assert response_store.purge_expired(s, settings, now) == 0
        assert response_store.purge_expired(s, settings, now + 2 * DAY) == 1


def test_zero_keeps_stored_responses_until_deleted(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(response_store, "PURGE_CHUNK", 2)  # the chunked delete's loop, on a few rows
    settings = _settings(tmp_path, db_url, days=0)
    store = SqlResponseStore(settings)
    for i in range(5):
        store.save("a", _saved(f"resp_{i}", time.time() - 400 * DAY))
    assert store.get("a", "resp_0").id == "resp_0"
    with session_scope(settings) as s:
        assert orphans.sweep(s, settings, time.time()).responses == 0
    short = _settings(tmp_path, db_url, days=1)
    with session_scope(short) as s:
        assert response_store.purge_expired(s, short, time.time()) == 5
        assert s.scalar(select(func.count()).select_from(StoredResponse)) == 0
