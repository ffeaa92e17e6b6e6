"""Engine and session factory for the configured database (SQLite or Postgres), and what counts as the
database being unreachable (the api answers 503, the worker retries)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ftserve.core.config import Settings
from ftserve.core.errors import Unavailable

T = TypeVar("T")

# Seconds a Postgres connection attempt may take before the database counts as unreachable.
CONNECT_TIMEOUT_SECONDS = 5


def make_engine(url: str, idle_in_transaction_ms: int | None = None) -> Engine:
    """An engine with the per-backend settings ftserve relies on.

    idle_in_transaction_ms (Postgres): the server ends a session that sits inside a transaction this long,
    releasing its row locks; the training side sets it so a frozen worker cannot hold its job row forever.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the api read while the worker writes events every step.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if idle_in_transaction_ms:
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_ms)}"
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


@lru_cache
def _factory(url: str, idle_in_transaction_ms: int | None) -> sessionmaker[Session]:
    return sessionmaker(bind=make_engine(url, idle_in_transaction_ms), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings, *, idle_in_transaction_ms: int | None = None) -> Iterator[Session]:
    """A session on the settings' database that commits on success and rolls back on error."""
    session = _factory(settings.resolved_database_url(), idle_in_transaction_ms)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_unavailable(exc: BaseException) -> bool:
    """True when exc says the database could not be reached or dropped the connection (a retry may work),
    as opposed to a query the database refused (a bug or bad data: retrying changes nothing)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


# While the database is unreachable every request is a 503 that says when to try again.
DB_RETRY_AFTER_SECONDS = 5
DB_UNAVAILABLE = (
    f"The service's database is unreachable right now; nothing was changed. "
    f"Retry after {DB_RETRY_AFTER_SECONDS} seconds (Retry-After)."
)


def domain_error(exc: BaseException) -> BaseException:
    """exc, or the domain error it stands for: an unreachable database is Unavailable (503, Retry-After)."""
    if is_unavailable(exc):
        return Unavailable(DB_UNAVAILABLE, code="database_unavailable", retry_after=DB_RETRY_AFTER_SECONDS)
    return exc


def in_session(settings: Settings, work: Callable[[Session], T]) -> T:
    """`work` in a session of its own (committed on success), for a port the control plane implements: an
    unreachable database comes out as the domain's Unavailable, so a role without the api's handlers (a stream,
    a batch line) still answers 503."""
    try:
        with session_scope(settings) as session:
            return work(session)
    except Exception as exc:
        translated = domain_error(exc)
        if translated is exc:
            raise
        raise translated from exc
