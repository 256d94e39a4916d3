"""The bytes of uploaded models, kept in the store so that every service process reads the same ones."""
from __future__ import annotations

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from predictor.store.models import ModelBlob
from predictor.store.upsert import dialect_insert

__all__ = ["has_model_blob", "read_model_blob", "save_model_blob"]


def save_model_blob(session: Session, model_id: str, data: bytes) -> None:
    """Keep the model's bytes (its models row must exist); idempotent: bytes kept already stay."""
    table = ModelBlob.__table__
    assert isinstance(table, Table)
    session.flush()
    session.execute(dialect_insert(session, table).values(model_id=model_id, data=data)
                    .on_conflict_do_nothing(index_elements=[table.c.model_id]))


def read_model_blob(session: Session, model_id: str) -> bytes | None:
    """The model's bytes, None when none are kept."""
    data = session.scalar(select(ModelBlob.data).where(ModelBlob.model_id == model_id))
    return None if data is None else bytes(data)


def has_model_blob(session: Session, model_id: str) -> bool:
    """Whether the model's bytes are kept (without reading them)."""
    return session.scalar(select(ModelBlob.model_id).where(ModelBlob.model_id == model_id)) is not None
