"""INSERT constructs with ON CONFLICT, for the two databases the store runs on, and bulk inserts of many rows."""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from predictor.errors import StoreError

__all__ = ["dialect_insert", "insert_new_rows"]


def dialect_insert(session: Session, table: Table) -> Any:
    """Return the dialect's INSERT construct, which supports ON CONFLICT on SQLite and PostgreSQL."""
    dialect_name = session.get_bind().dialect.name
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    raise StoreError(f"unsupported database dialect {dialect_name!r}; use SQLite or PostgreSQL")


def insert_new_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]], conflict: Sequence[str],
                    returning: str) -> list[Any]:
    """Insert the rows (dicts with the same keys, in order) skipping those whose `conflict` columns exist; the
    `returning` column of each row inserted.

    PostgreSQL gets one statement whose parameters are one array per column (unnest): its text is the same for
    every batch, where a multi-row VALUES statement of thousands of placeholders costs the driver more to parse
    than the database to run. SQLite gets SQLAlchemy's multi-row INSERT.
    """
    if not rows:
        return []
    if session.get_bind().dialect.name != "postgresql":
        statement = (dialect_insert(session, table).on_conflict_do_nothing(index_elements=list(conflict))
                     .returning(table.c[returning]))
        return list(session.execute(statement, list(rows)).scalars())
    dialect = session.get_bind().dialect
    columns = list(rows[0])
    arrays: list[list[Any]] = []
    casts, selected = [], []
    for index, name in enumerate(columns):
        column = table.c[name]
        is_json = isinstance(column.type, JSON)
        values = [row[name] for row in rows]
        arrays.append([None if value is None else json.dumps(value) for value in values] if is_json else values)
        element_type = "text" if is_json else column.type.compile(dialect=dialect)
        casts.append(f"CAST(%b AS {element_type}[])")
        selected.append(f"CAST(c{index} AS {column.type.compile(dialect=dialect)})" if is_json else f"c{index}")
    aliases = ", ".join(f"c{index}" for index in range(len(columns)))
    statement = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"SELECT {', '.join(selected)} FROM unnest({', '.join(casts)}) WITH ORDINALITY AS t({aliases}, position) "
        f"ORDER BY position ON CONFLICT ({', '.join(conflict)}) DO NOTHING RETURNING {returning}")
    # The driver's own cursor, in the session's transaction: arrays sent in binary (no text escaping per element).
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor(binary=True) as cursor:
        cursor.execute(statement, arrays)
        return [row[0] for row in cursor.fetchall()]
