"""Database engine, sessions and migrations. SQLite (WAL, foreign keys on) or PostgreSQL."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Executable, MetaData, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from tuneyard.config import Settings, get_settings
from tuneyard.errors import Unavailable
from tuneyard.storage import Layout

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The PostgreSQL advisory lock that processes starting on one database take in turn to
# migrate it and create its first admin (any fixed 64-bit number; this one spells "tuneyard").
SCHEMA_LOCK_KEY = 0x74756E6579617264
UPGRADE_COMMAND = "tuneyard db upgrade"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def get_engine(settings: Settings | None = None) -> Engine:
    settings = settings or get_settings()
    if not settings.data_dir.is_dir():
        Layout(settings).ensure_root()
    return engine_for(settings.db_url)


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(settings), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """One unit of work: commits if the block succeeds, rolls back if it raises."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


WAITING_FOR_LOCK = "Another Tuneyard process is migrating or preparing the database; waiting."


@contextmanager
def schema_lock(settings: Settings | None = None, announce=lambda _text: None) -> Iterator[None]:
    """Held while a process migrates the database and creates its first admin, so that any
    number of processes may start together: they take turns, and the later ones find the work
    done (`announce` hears when one has to wait). PostgreSQL: an advisory lock on a connection
    of its own (released if the process dies); SQLite: an exclusive lock on a file beside the
    database."""
    settings = settings or get_settings()
    engine = get_engine(settings)
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            key = {"key": SCHEMA_LOCK_KEY}
            if not connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), key):
                announce(WAITING_FOR_LOCK)
                connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield  # a database no other process can open
        return
    path = Path(database)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            announce(WAITING_FOR_LOCK)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; how many rows it changed. Session.execute is typed to answer a
    plain Result, but for these statements it is a CursorResult, which has the count."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def alembic_config(settings: Settings | None = None):
    from alembic.config import Config

    settings = settings or get_settings()
    get_engine(settings)  # creates the data dir
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", settings.db_url.replace("%", "%%"))
    return config


class SchemaMismatch(Unavailable):
    """The database's schema is not the one this code needs; the message says what to run."""


@dataclass(frozen=True)
class SchemaState:
    """Where the database's schema stands against this code's migrations."""

    current: str | None  # the database's revision; None for an empty database
    head: str  # the newest revision this code has
    known: bool  # whether this code has the database's revision

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def newer_than_code(self) -> bool:
        return self.current is not None and not self.known


@lru_cache(maxsize=1)
def _migration_scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR))


def schema_state(settings: Settings | None = None) -> SchemaState:
    from alembic.runtime.migration import MigrationContext
    from alembic.util.exc import CommandError

    settings = settings or get_settings()
    script = _migration_scripts()
    with get_engine(settings).connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    try:
        known = current is None or script.get_revision(current) is not None
    except CommandError:
        known = False
    return SchemaState(current=current, head=script.get_current_head(), known=known)


def _refuse_newer(state: SchemaState) -> SchemaMismatch:
    return SchemaMismatch(
        f"The database's schema is at revision {state.current}, which this Tuneyard does not "
        f"know (its newest is {state.head}): a newer Tuneyard migrated it. Install the version "
        "of Tuneyard the rest of the team runs, then start again."
    )


def ensure_schema(
    settings: Settings | None = None, migrate: bool = False, announce=lambda _text: None
) -> None:
    """Bring the schema to this code's head, or refuse to go on. Call it holding schema_lock.

    Code older than the schema refuses. Code newer than the schema migrates an SQLite
    database (the embedded default) as it always did; a PostgreSQL database, which a team
    shares, only when told to (`migrate`, or TUNEYARD_AUTO_MIGRATE); otherwise it refuses and
    names the command that migrates."""
    settings = settings or get_settings()
    state = schema_state(settings)
    if state.up_to_date:
        return
    if state.newer_than_code:
        raise _refuse_newer(state)
    if get_engine(settings).dialect.name != "sqlite" and not (migrate or settings.auto_migrate):
        where = "is empty" if state.current is None else f"is at revision {state.current}"
        raise SchemaMismatch(
            f"The database {where}; this Tuneyard needs revision {state.head}. Run "
            f"`{UPGRADE_COMMAND}` once with the same settings, then start again (or start "
            "with --migrate, or set TUNEYARD_AUTO_MIGRATE=true, to migrate on start)."
        )
    announce(f"Migrating the database from {state.current or 'empty'} to {state.head}.")
    _upgrade(settings)


def _upgrade(settings: Settings | None) -> None:
    from alembic import command

    command.upgrade(alembic_config(settings), "head")


def upgrade(settings: Settings | None = None) -> None:
    """Apply every migration not yet applied, one process at a time; refuse a database that a
    newer Tuneyard migrated."""
    with schema_lock(settings):
        state = schema_state(settings)
        if state.newer_than_code:
            raise _refuse_newer(state)
        _upgrade(settings)


def check(settings: Settings | None = None) -> None:
    """Fail if the tables in models.py differ from what the migrations build."""
    from alembic import command

    upgrade(settings)
    command.check(alembic_config(settings))
