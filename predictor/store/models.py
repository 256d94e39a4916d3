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
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from predictor.runtime.optimizer import RuntimeSpec

__all__ = [
    "Base",
    "Device",
    "Job",
    "JsonType",
    "MeasuredKernel",
    "Measurement",
    "MeasurementTally",
    "ModelBlob",
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

# A key hash that is no KernelKey's (not 32 lowercase hex digits: a hand-written table's), as each database tests it.
OTHER_KEY_HASH_POSTGRESQL = "key_hash !~ '^[0-9a-f]{32}$'"
OTHER_KEY_HASH_SQLITE = "length(key_hash) != 32 OR key_hash GLOB '*[^0-9a-f]*'"

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
    # What decides the device's kernels, as its agent observed them (predictor.runtime.devices.KernelProfile.to_dict):
    # runtime, CPU architecture and features, NCHWc block, and the kernels its runtime builds for the probes.
    kernel_profile: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Raised by every upload that adds measurements; measured_kernels rows it changed carry its new value.
    table_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Raised by every other change a loaded predictor depends on: run reports, regressors, overhead, kernel profile.
    state_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

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
    """One measured kernel latency; append-only, unique per (device, key, run)."""

    __tablename__ = "measurements"
    __table_args__ = (
        # Also what recomputing a key's median of run medians reads: (device, key) comes first.
        UniqueConstraint("device_id", "key_hash", "run_id"),
        # Keyset pages of a device's table, all of it or one op type's, in insertion order.
        Index("ix_measurements_device_id_id", "device_id", "id"),
        Index("ix_measurements_device_id_op_type_id", "device_id", "op_type", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    # Not a foreign key: agents may upload measurements before (or without) a run row.
    run_id: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64))
    key: Mapped[dict[str, Any]] = mapped_column()
    op_type: Mapped[str] = mapped_column(String(64))
    bits: Mapped[int] = mapped_column(Integer)
    median_ms: Mapped[float] = mapped_column(Float)
    p10_ms: Mapped[float] = mapped_column(Float)
    p90_ms: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class MeasuredKernel(Base):
    """A device's measured kernel (distinct key): the median of its runs' medians and the numbers loading needs.

    Kept by every upload (predictor.store.aggregates), so a predictor loads its table without reading the
    measurement rows or parsing a key: one row per key, summaries computed when the key was first stored.
    """

    __tablename__ = "measured_kernels"
    __table_args__ = (
        Index("ix_measured_kernels_device_id_seq", "device_id", "seq"),
        Index("ix_measured_kernels_device_id_shape_hash", "device_id", "shape_hash"),
        # The few kernels whose key hash is no KernelKey's (hand-written tables), which a load reads apart.
        Index("ix_measured_kernels_other_keys", "device_id", postgresql_where=text(OTHER_KEY_HASH_POSTGRESQL),
              sqlite_where=text(OTHER_KEY_HASH_SQLITE)),
    )

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    op_type: Mapped[str] = mapped_column(String(64))
    bits: Mapped[int] = mapped_column(Integer)
    median_ms: Mapped[float] = mapped_column(Float)
    # Measurement rows of the key (runs that measured it).
    runs: Mapped[int] = mapped_column(Integer)
    # The device's table_seq when this row last changed: what a loaded predictor has not seen yet.
    seq: Mapped[int] = mapped_column(BigInteger)
    # predictor.store.summary; NULL for a key that is not a usable kernel key.
    bytes_moved: Mapped[float | None] = mapped_column(Float, default=None)
    macs: Mapped[float | None] = mapped_column(Float, default=None)
    sparsity: Mapped[float | None] = mapped_column(Float, default=None)
    sparsity_pattern: Mapped[str | None] = mapped_column(String(32), default=None)
    shape_hash: Mapped[str | None] = mapped_column(String(32), default=None)


class MeasurementTally(Base):
    """How many measurement rows and distinct kernels a device has per op type and bit-width."""

    __tablename__ = "measurement_tallies"

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    op_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    bits: Mapped[int] = mapped_column(Integer, primary_key=True)
    measurements: Mapped[int] = mapped_column(BigInteger)
    kernels: Mapped[int] = mapped_column(BigInteger)


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


class ModelBlob(Base):
    """The bytes of an uploaded model, where every service process reads them."""

    __tablename__ = "model_blobs"

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Job(Base):
    """A background job (regressor training): queued by any service process, run by a `latpred worker`."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created_at", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # Written by the worker running it every few seconds: a running job whose worker died is found by its age.
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(256), default=None)
    result: Mapped[Any | None] = mapped_column(JsonType, nullable=True, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
