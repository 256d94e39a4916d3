"""`latpred migrate`: the store's schema brought to the newest revision, once, before services start."""
from __future__ import annotations

from predictor.store import open_store, schema_revision
from service.cli.inputs import load_settings
from service.cli.output import emit_line

__all__ = ["migrate"]


def migrate() -> None:
    """Migrate the store (LATPRED_DATABASE_URL, else the SQLite file under LATPRED_HOME) to the newest schema.

    Safe to run again and beside running services (one migration at a time); `latpred serve` migrates as well,
    so this is for deployments that migrate once before starting several processes.
    """
    store = open_store(load_settings())
    try:
        where = store.engine.url.render_as_string(hide_password=True)
        emit_line(f"{where}: schema at revision {schema_revision(store.engine)}")
    finally:
        store.close()
