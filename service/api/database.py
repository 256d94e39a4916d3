"""The app's connection to the store, opened lazily so the service starts (and heals) while the DB is down."""
from __future__ import annotations

import logging
import threading

from sqlalchemy import text

from service.context import Store, open_store
from service.settings import Settings

__all__ = ["StoreConnector"]

logger = logging.getLogger(__name__)


class StoreConnector:
    """Opens the store on first use and keeps it; a failed open is retried on the next request.

    The engine is created with pool_pre_ping, so a connection broken while the database was down is
    replaced on checkout instead of being handed out again.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None
        self._lock = threading.Lock()

    def get(self) -> Store:
        """Return the open store, opening (and migrating) it now if needed; raises StoreError."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings)
            return self._store

    def ping(self) -> None:
        """Run a trivial query; raises StoreError or the driver's error when the database is unreachable."""
        with self.get().engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
