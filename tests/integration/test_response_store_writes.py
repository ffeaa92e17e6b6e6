"""SqlResponseStore's group commit on a real SQLite and Postgres database: saves from many threads at once are
each committed before their call returns (readable at once, none lost), and a write that fails fails every save
of its group (an unreachable database: each one the domain's Unavailable)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ftserve.control.db.migrate import upgrade_head
from ftserve.control.services.response_store import SqlResponseStore
from ftserve.core.config import Settings
from ftserve.core.errors import Unavailable
from ftserve.serving.ports import SavedResponse


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SqlResponseStore:
    sqlite = f"sqlite:///{tmp_path / 's.db'}"
    url = sqlite if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    upgrade_head(url)
    return SqlResponseStore(Settings(data_dir=tmp_path / "data", database_url=url))


def _saved(rid: str) -> SavedResponse:
    return SavedResponse(rid, int(time.time()), {"id": rid, "output": [{"n": rid}]}, [{"id": f"msg_{rid}"}], [])


def test_concurrent_saves_are_each_readable_when_they_return(store: SqlResponseStore) -> None:
    def save_then_read(i: int) -> str:
        store.save(f"org{i % 3}", _saved(f"resp_{i}"))
        return str(store.get(f"org{i % 3}", f"resp_{i}").body["output"][0]["n"])

    with ThreadPoolExecutor(16) as pool:
        read = list(pool.map(save_then_read, range(120)))
    assert read == [f"resp_{i}" for i in range(120)]


def test_a_failed_group_write_fails_each_save(tmp_path: Path) -> None:
    # A Postgres nobody listens on: the connection is refused at once.
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/none")
    store = SqlResponseStore(settings)
    failures: list[BaseException] = []
    lock = threading.Lock()

    def save(i: int) -> None:
        try:
            store.save("o", _saved(f"resp_{i}"))
        except BaseException as exc:
            with lock:
                failures.append(exc)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(save, range(16)))
    assert len(failures) == 16 and all(isinstance(e, Unavailable) for e in failures)
