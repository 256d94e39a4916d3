"""INSERT constructs with ON CONFLICT, for the two databases the store runs on."""
from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from predictor.errors import StoreError

__all__ = ["dialect_insert"]


def dialect_insert(session: Session, table: Table) -> Any:
    """Return the dialect's INSERT construct, which supports ON CONFLICT on SQLite and PostgreSQL."""
    dialect_name = session.get_bind().dialect.name
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    raise StoreError(f"unsupported database dialect {dialect_name!r}; use SQLite or PostgreSQL")
