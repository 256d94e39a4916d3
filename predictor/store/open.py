"""Opening the store that settings name, shared by the CLI, the REST app and the Python API."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from predictor.settings import StoreSettings
from predictor.store.database import create_store_engine, session_factory, upgrade_schema

__all__ = ["Store", "open_store"]

logger = logging.getLogger(__name__)


@dataclass
class Store:
    """An engine with its schema at head, and a session factory bound to it."""

    engine: Engine
    sessions: sessionmaker[Session]

    def close(self) -> None:
        self.engine.dispose()


def open_store(settings: StoreSettings) -> Store:
    """Connect to `settings.resolved_database_url` and migrate the schema to head (a SQLite file's home is made)."""
    if not settings.database_url:
        settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_store_engine(settings.resolved_database_url)
    upgrade_schema(engine)
    return Store(engine=engine, sessions=session_factory(engine))
