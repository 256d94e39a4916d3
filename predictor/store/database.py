"""Engines, sessions and schema migrations for the store (SQLite file or PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from predictor.errors import StoreError

__all__ = [
    "MIGRATIONS_DIR",
    "create_store_engine",
    "downgrade_schema",
    "schema_revision",
    "session_factory",
    "session_scope",
    "upgrade_schema",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Arbitrary constant key: serialises concurrent upgrades (several service workers starting at once).
_PG_MIGRATION_LOCK_KEY = 0x6C61747072656421


def _normalise_url(url: str | URL) -> URL:
    """Parse the URL and route plain PostgreSQL URLs to the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_sqlite_memory(url: URL) -> bool:
    """Whether the SQLite URL names an in-memory database rather than a file."""
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:")


def _set_sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """WAL lets readers run beside one writer; busy_timeout makes writers wait instead of failing."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _describe(url: URL) -> str:
    """Render the URL for messages without its password."""
    return url.render_as_string(hide_password=True)


def create_store_engine(url: str | URL) -> Engine:
    """Create an engine for a store URL and check that the database can be reached.

    SQLite: parent directories of the file are created; WAL, foreign keys and a 30 s busy timeout
    are set on every connection. ``postgresql://`` URLs use the psycopg 3 driver.
    Raises StoreError when the database cannot be connected to.
    """
    parsed = _normalise_url(url)
    if parsed.get_backend_name() == "sqlite" and not _is_sqlite_memory(parsed):
        assert parsed.database is not None
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)
    try:
        with engine.connect():
            pass
    except (OperationalError, InterfaceError) as exc:
        engine.dispose()
        raise StoreError(f"cannot connect to database {_describe(parsed)}: {exc.orig}") from exc
    logger.debug("connected to store %s", _describe(parsed))
    return engine


def _alembic_config() -> Config:
    """Build the Alembic config in code, pointing at the migrations shipped inside the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind the engine to the given Alembic revision (default: head).

    Idempotent: running it on an up-to-date database changes nothing.
    """
    config = _alembic_config()
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except (OperationalError, InterfaceError) as exc:
        raise StoreError(f"cannot migrate database {_describe(engine.url)}: {exc.orig}") from exc
    logger.info("store schema of %s at revision %s", _describe(engine.url), revision)


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def downgrade_schema(engine: Engine, revision: str) -> None:
    """Migrate the database behind the engine down to the given Alembic revision ("base": empty)."""
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory bound to the engine; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Yield a session that commits on success and rolls back on any exception.

    Connection and locking failures of the database are raised as StoreError.
    """
    session = factory()
    try:
        yield session
        session.commit()
    except (OperationalError, InterfaceError) as exc:
        session.rollback()
        raise StoreError(f"database operation failed: {exc.orig}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
