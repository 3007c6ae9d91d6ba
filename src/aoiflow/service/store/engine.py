"""Engines for the store: SQLite file settings, PostgreSQL reconnects, connection failures as
``StoreUnavailable``, and migrating a database to the newest schema.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000  # a writer waits this long for another writer before giving up
PG_CONNECT_TIMEOUT_S = 5  # an unreachable host fails a call in seconds, not minutes
_WRITE = "aoiflow_write"  # execution option: this transaction will write
_MIGRATION_LOCK = 0x414F49  # any fixed number: PostgreSQL advisory lock held while migrating

# What a database that is down, unreachable, locked too long or gone looks like to SQLAlchemy.
# IntegrityError and DataError are not here: those are the caller's mistakes, not an outage.
_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError, sa.exc.TimeoutError)


class StoreUnavailable(RuntimeError):
    """The database cannot be reached (down, unreachable, refused, locked too long, file gone).

    The message names the database with its password hidden; the HTTP service answers 503."""


def describe(url: sa.URL) -> str:
    """The URL for messages and logs, password hidden."""
    return url.render_as_string(hide_password=True)


def _reason(error: Exception) -> str:
    """The driver's own first line (e.g. 'Connection refused'), without SQLAlchemy's SQL dump."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def unavailable_as(name: str) -> Iterator[None]:
    """Turn connection-level failures inside the block into ``StoreUnavailable`` naming ``name``."""
    try:
        yield
    except _UNAVAILABLE as e:
        raise StoreUnavailable(f"database {name} is unavailable: {_reason(e)}") from e


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays (which inference results are full of) as plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON: {value!r}")


def _dumps(value: Any) -> str:
    # allow_nan=False: PostgreSQL refuses NaN in JSON and SQLite would keep it; fail the same on both.
    return json.dumps(value, default=_jsonable, allow_nan=False)


def sqlite_path(url: sa.URL) -> Path:
    """The absolute file of a SQLite URL; in-memory databases are refused (each connection of
    the pool would see its own empty database)."""
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise ValueError(f"the store needs a SQLite file path (sqlite:///path/to/aoiflow.db), got {describe(url)}")
    return Path(url.database).expanduser().resolve()


def make_engine(url: sa.URL, *, create: bool = False) -> sa.Engine:
    """An engine for a supported database; ``create`` lets SQLite make a missing file."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, sqlite_path(url), create)
    if url.get_backend_name() == "postgresql":
        return _postgres_engine(url)
    raise ValueError(f"the store supports sqlite and postgresql URLs, got {describe(url)}")


def _sqlite_engine(url: sa.URL, path: Path, create: bool) -> sa.Engine:
    # mode=rw after the first open: a file that was moved or deleted fails the call
    # (StoreUnavailable) instead of silently becoming a new empty database without tables.
    file_url = url.set(database=f"file:{quote(str(path))}",
                       query={**url.query, "uri": "true", "mode": "rwc" if create else "rw"})
    # NullPool: every call opens the file afresh, so a file that went away and came back is
    # simply found again (a pooled connection would keep writing to the moved file's inode).
    # Opening a SQLite file costs well under a millisecond.
    engine = sa.create_engine(file_url, poolclass=NullPool, json_serializer=_dumps)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own handling would
        # start transactions late and never as IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: the next line may wait
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # Writers take the write lock at BEGIN: a deferred transaction that reads and then writes
        # can fail at once with SQLITE_BUSY when another writer got in between, busy timeout or not.
        write = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _enable_wal(cursor: Any) -> None:
    """WAL journal: readers never block the writer, nor it them. The mode stays in the file, so
    this only changes anything on a new file, where two connections opening it at once can get
    "database is locked" at once, without the busy timeout's wait (SQLite refuses to wait there
    for fear of deadlock): retry for as long as the busy timeout would have waited."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _postgres_engine(url: sa.URL) -> sa.Engine:
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    # pool_pre_ping: a pooled connection the server dropped (restart, failover, terminated backend)
    # is tested at checkout and replaced, so the first call after the server came back succeeds.
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args, json_serializer=_dumps)


def for_writing(engine: sa.Engine) -> sa.Engine:
    """The same engine and pool, marked so that SQLite begins its transactions IMMEDIATE."""
    return engine.execution_options(**{_WRITE: True})


def alembic_config(url: sa.URL | None = None) -> Any:
    """An alembic ``Config`` for the packaged migrations (no alembic.ini needed). With ``url``
    it also works for alembic's commands directly, e.g. ``command.revision(cfg, autogenerate=True)``."""
    from alembic.config import Config  # alembic only loads when a store opens

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade_to_head(engine: sa.Engine) -> None:
    """Migrate the database to the newest schema, in one transaction.

    Two services starting together must not both create the tables: SQLite's BEGIN IMMEDIATE and
    a PostgreSQL advisory lock make the second wait and then find the schema already at head."""
    from alembic import command
    from alembic.util.exc import CommandError

    config = alembic_config()
    with for_writing(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        try:
            command.upgrade(config, "head")
        except CommandError as e:  # e.g. a revision this aoiflow does not know: a newer schema
            raise RuntimeError(f"cannot migrate the database schema: {e} "
                               "(was it made by a newer aoiflow?)") from e
