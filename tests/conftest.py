"""Shared fixtures: the tiny base built once, fresh Postgres databases, a clean Redis db, real servers."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from ftserve.core.config import Settings, get_settings
from tests.servers import xdist_index

# Under pytest-xdist each process, and every server it starts (they inherit this environment), gets its share of
# the cores: torch's default of one thread per core in every process oversubscribes them, and a training step
# then ran 2-3x slower than alone (measured: tests/e2e/test_tool_finetune.py, 35 s alone, 104 s beside another).
if "PYTEST_XDIST_WORKER" in os.environ:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

PG_ADMIN = os.environ.get("FTSERVE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# pytest-xdist runs the suite in several processes (`-n 2` in make test): each gets its own Redis db, so one
# process's flush or Celery queue never touches another's. Postgres databases are per test already.
REDIS_URL = os.environ.get("FTSERVE_TEST_REDIS", f"redis://127.0.0.1:6379/{15 - xdist_index()}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--storage",
        choices=("local", "s3"),
        default="local",
        help="where the servers the tests start keep their artifacts: the data dir, or a real S3 server (Swift)",
    )


@pytest.fixture(scope="session", autouse=True)
def storage_mode(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """With --storage s3, one Swift server for the run: every server a test starts keeps its artifacts in
    its own prefix of one bucket there (tests/servers.base_env reads FTSERVE_TEST_S3)."""
    mode = str(request.config.getoption("--storage"))
    if mode != "s3":
        yield mode
        return
    from tests.s3server import make_bucket, start_swift
    from tests.servers import free_port

    server = start_swift(tmp_path_factory.mktemp("swift"), "127.0.0.1", free_port())
    make_bucket(server, "ftserve-tests")
    os.environ["FTSERVE_TEST_S3"] = json.dumps({"bucket": "ftserve-tests", **server.env()})
    try:
        yield mode
    finally:
        os.environ.pop("FTSERVE_TEST_S3", None)
        server.stop()


@pytest.fixture(scope="session")
def bases_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bases dir holding ftserve-tiny, built once for the whole run (a few seconds). The xdist processes of one
    run share it (prepare_base builds each base once under a file lock), so SmolLM2 is prepared once too."""
    from ftserve.models.bases import prepare_base

    root = tmp_path_factory.getbasetemp()
    d = root.parent / "bases" if "PYTEST_XDIST_WORKER" in os.environ else root / "bases"
    d.mkdir(exist_ok=True)
    prepare_base(Settings(data_dir=d, bases_dir=d), "ftserve-tiny")
    return d


@pytest.fixture()
def settings(tmp_path: Path, bases_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """In-process settings on a fresh SQLite data dir, migrated to head."""
    from ftserve.control.db.migrate import upgrade_head

    for key in list(os.environ):
        if key.startswith("FTSERVE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FTSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FTSERVE_BASES_DIR", str(bases_dir))
    get_settings.cache_clear()
    s = get_settings()
    s.resolved_data_dir().mkdir(parents=True)
    upgrade_head(s.resolved_database_url())
    yield s
    get_settings.cache_clear()


def _pg_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - CI must have Postgres
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN}: {exc}")


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A brand-new, empty Postgres database for one test; dropped afterwards."""
    name = f"ftserve_test_{secrets.token_hex(4)}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def redis_url() -> str:
    """The test Redis db, emptied so no earlier run's messages are delivered."""
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        client.flushdb()
    except redis.RedisError as exc:  # pragma: no cover - CI must have Redis
        pytest.fail(f"Redis is required at {REDIS_URL}: {exc}")
    return REDIS_URL
