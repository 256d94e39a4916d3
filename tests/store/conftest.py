"""Fixtures shared by the store's tests."""
from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from predictor.store import session_factory


@pytest.fixture
def factory(store_engine: Engine) -> sessionmaker[Session]:
    """Sessions on the test store (SQLite, and PostgreSQL where the test is parametrized for it)."""
    return session_factory(store_engine)
