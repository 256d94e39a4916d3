"""Shared fixtures: a store database on SQLite (a temporary file) and on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from predictor.store import create_store_engine, upgrade_schema

POSTGRES_ADMIN_URL = os.environ.get(
    "LATPRED_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """LATPRED_HOME in a temporary folder for the whole session, so nothing a test runs (in this process or a
    child) opens the user's own store under ~/.local/share/latpred; LATPRED_DATABASE_URL unset for the same
    reason. Tests that need a store of their own still name it."""
    home = tmp_path_factory.mktemp("latpred-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATPRED_HOME", str(home))
        patch.delenv("LATPRED_DATABASE_URL", raising=False)
        yield home


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """Create a uniquely named PostgreSQL database for the test session; drop it afterwards."""
    admin = create_engine(
        POSTGRES_ADMIN_URL,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"connect_timeout": 5},
    )
    name = f"latpred_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        reason = f"PostgreSQL unreachable at {make_url(POSTGRES_ADMIN_URL)!r}: {exc.orig}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so PostgreSQL tests must run)")
        pytest.skip(reason)
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """URL of the session's PostgreSQL database, its tables emptied (schema kept) for this test."""
    engine = create_engine(postgres_database, poolclass=NullPool)
    with engine.begin() as connection:
        tables = connection.execute(
            text(
                "SELECT tablename FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
        ).scalars()
        names = ", ".join(f'"{table}"' for table in tables)
        if names:
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return postgres_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file in a not-yet-existing folder under tmp_path."""
    return f"sqlite:///{tmp_path / 'store' / 'latpred.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """An empty store URL, once per backend."""
    return str(request.getfixturevalue("postgres_url" if request.param == "postgresql" else "sqlite_url"))


@pytest.fixture
def store_engine(store_url: str) -> Iterator[Engine]:
    """Engine on an empty store whose schema is migrated to head."""
    engine = create_store_engine(store_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()
