"""ORM tables of the store: devices, profiling runs, measurements, regressors, validations, models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from predictor.runtime import RuntimeSpec

__all__ = [
    "Base",
    "Device",
    "JsonType",
    "Measurement",
    "ProfilingRun",
    "Regressor",
    "StoredModel",
    "UtcDateTime",
    "Validation",
    "utc_now",
]

# Deterministic constraint names, so Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JsonType = JSON().with_variant(JSONB(), "postgresql")


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamp on every backend (SQLite stores naive text, read back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Reject naive datetimes and normalise aware ones to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; store timezone-aware UTC timestamps")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to naive values read from SQLite; convert aware ones to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base holding the store's metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JsonType}


class Device(Base):
    """A target: hardware + runtime + version + execution provider + threads."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    backend: Mapped[str] = mapped_column(String(32))
    execution_provider: Mapped[str] = mapped_column(String(128))
    runtime_version: Mapped[str] = mapped_column(String(64))
    threads: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    overhead: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # What decides the device's kernels, as its agent observed them (predictor.devices.KernelProfile.to_dict):
    # runtime, CPU architecture and features, NCHWc block, and the kernels its runtime builds for the probes.
    kernel_profile: Mapped[dict[str, Any] | None] = mapped_column(default=None)

    def __repr__(self) -> str:
        return f"Device(id={self.id!r}, name={self.name!r}, backend={self.backend!r})"

    @property
    def runtime(self) -> RuntimeSpec:
        """The runtime half of the device: what kernels are extracted and measured with."""
        return RuntimeSpec(backend=self.backend, execution_provider=self.execution_provider, threads=self.threads,
                           runtime_version=self.runtime_version)


class ProfilingRun(Base):
    """One batch profiling run on a device; the run id is chosen by the client."""

    __tablename__ = "profiling_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16), default="running")
    budget_minutes: Mapped[float | None] = mapped_column(Float, default=None)
    report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Where the run's measurements came from: the runtime (RuntimeSpec.to_dict) and the host that ran it.
    runtime: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    host: Mapped[str | None] = mapped_column(Text, default=None)


class Measurement(Base):
    """One measured kernel latency; append-only, unique per (device, run, key)."""

    __tablename__ = "measurements"
    __table_args__ = (UniqueConstraint("device_id", "run_id", "key_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    # Not a foreign key: agents may upload measurements before (or without) a run row.
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), index=True)
    key: Mapped[dict[str, Any]] = mapped_column()
    op_type: Mapped[str] = mapped_column(String(64), index=True)
    bits: Mapped[int] = mapped_column(Integer)
    median_ms: Mapped[float] = mapped_column(Float)
    p10_ms: Mapped[float] = mapped_column(Float)
    p90_ms: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Regressor(Base):
    """A trained per-op-type LightGBM regressor in LightGBM's own text format."""

    __tablename__ = "regressors"
    __table_args__ = (UniqueConstraint("device_id", "op_type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    op_type: Mapped[str] = mapped_column(String(64))
    model_text: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column()
    data_version: Mapped[str] = mapped_column(String(64))
    trained_at: Mapped[datetime] = mapped_column(default=utc_now)


class Validation(Base):
    """A predicted-vs-measured end-to-end latency pair for one model and config."""

    __tablename__ = "validations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(256))
    config_name: Mapped[str] = mapped_column(String(256))
    predicted_ms: Mapped[float] = mapped_column(Float)
    measured_ms: Mapped[float] = mapped_column(Float)
    # The measurement in the device's baseline state, what the prediction is held against (None: not scaled).
    scaled_ms: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class StoredModel(Base):
    """An uploaded ONNX model, identified by the sha256 hex digest of its bytes."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    inputs: Mapped[Any] = mapped_column(JsonType)
    kernels: Mapped[Any | None] = mapped_column(JsonType, nullable=True, default=None)
