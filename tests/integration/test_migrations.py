"""Alembic: one head, upgrade/downgrade round trip, and models that match the migrations, on SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from ftserve.control.db.migrate import downgrade_base, heads, upgrade_head
from ftserve.control.db.session import make_engine
from ftserve.control.db.tables import Base


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_single_head(tmp_path: Path) -> None:
    assert len(heads(f"sqlite:///{tmp_path / 'x.db'}")) == 1


def test_round_trip_and_models_match(db_url: str) -> None:
    upgrade_head(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    downgrade_base(db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_head(db_url)
    assert {"files", "fine_tuning_jobs", "job_events"} <= set(inspect(engine).get_table_names())
    engine.dispose()
