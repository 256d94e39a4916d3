"""Opening the store named by the settings, shared by the CLI and the REST app."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from predictor.store import create_store_engine, session_factory, upgrade_schema
from service.settings import Settings

__all__ = ["Store", "open_store"]

logger = logging.getLogger(__name__)


@dataclass
class Store:
    """An engine with its schema at head, and a session factory bound to it."""

    engine: Engine
    sessions: sessionmaker[Session]

    def close(self) -> None:
        self.engine.dispose()


def open_store(settings: Settings) -> Store:
    """Connect to `settings.resolved_database_url` and migrate the schema to head."""
    if not settings.database_url:
        settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_store_engine(settings.resolved_database_url)
    upgrade_schema(engine)
    return Store(engine=engine, sessions=session_factory(engine))
