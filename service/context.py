"""The store named by the settings: predictor.store.open_store, kept under this name for the modules that
still import it from here."""
from __future__ import annotations

from predictor.store import Store, open_store

__all__ = ["Store", "open_store"]
