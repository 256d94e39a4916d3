"""Scale: per-device aggregates that uploads keep, versions loaders check, jobs and model bytes in the store.

- measured_kernels: one row per (device, key) with the median of its runs' medians and the key's summary
  (bytes moved, MACs, sparsity, shape hash: predictor.store.summary), filled here from the stored measurements;
- measurement_tallies: rows and distinct kernels per (device, op type, bit-width);
- devices.table_seq and devices.state_version: what a cached predictor compares before it is used;
- jobs: background jobs any process queues and a worker process runs;
- model_blobs: the bytes of uploaded models, for every service process (files under LATPRED_HOME/models stay
  readable: the service copies one into the store the first time it reads it);
- measurements: unique per (device, key, run) instead of (device, run, key), so a key's rows are found by the
  same index; keyset-page indexes (device, id) and (device, op type, id) instead of single-column indexes on
  run_id, key_hash and op_type (no query reads by those alone).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-20
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)
_BACKFILL_ROWS = 5000

# Frozen views of the tables as of this revision, for the backfill.
_measurements = sa.table(
    "measurements", sa.column("id", sa.Integer()), sa.column("device_id", sa.Integer()),
    sa.column("key_hash", sa.String()), sa.column("key", _JSON), sa.column("op_type", sa.String()),
    sa.column("bits", sa.Integer()), sa.column("median_ms", sa.Float()))
_measured_kernels = sa.table(
    "measured_kernels", sa.column("device_id", sa.Integer()), sa.column("key_hash", sa.String()),
    sa.column("op_type", sa.String()), sa.column("bits", sa.Integer()), sa.column("median_ms", sa.Float()),
    sa.column("runs", sa.Integer()), sa.column("seq", sa.BigInteger()), sa.column("bytes_moved", sa.Float()),
    sa.column("macs", sa.Float()), sa.column("sparsity", sa.Float()), sa.column("sparsity_pattern", sa.String()),
    sa.column("shape_hash", sa.String()))
_tallies = sa.table(
    "measurement_tallies", sa.column("device_id", sa.Integer()), sa.column("op_type", sa.String()),
    sa.column("bits", sa.Integer()), sa.column("measurements", sa.BigInteger()),
    sa.column("kernels", sa.BigInteger()))


def upgrade() -> None:
    op.add_column("devices", sa.Column("table_seq", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("devices", sa.Column("state_version", sa.BigInteger(), server_default="0", nullable=False))
    op.create_table(
        "measured_kernels",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("op_type", sa.String(length=64), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=False),
        sa.Column("median_ms", sa.Float(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("bytes_moved", sa.Float(), nullable=True),
        sa.Column("macs", sa.Float(), nullable=True),
        sa.Column("sparsity", sa.Float(), nullable=True),
        sa.Column("sparsity_pattern", sa.String(length=32), nullable=True),
        sa.Column("shape_hash", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_measured_kernels_device_id_devices"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "key_hash", name=op.f("pk_measured_kernels")),
    )
    op.create_index("ix_measured_kernels_device_id_seq", "measured_kernels", ["device_id", "seq"])
    op.create_index("ix_measured_kernels_device_id_shape_hash", "measured_kernels", ["device_id", "shape_hash"])
    op.create_table(
        "measurement_tallies",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("op_type", sa.String(length=64), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=False),
        sa.Column("measurements", sa.BigInteger(), nullable=False),
        sa.Column("kernels", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name=op.f("fk_measurement_tallies_device_id_devices"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "op_type", "bits", name=op.f("pk_measurement_tallies")),
    )
    op.create_table(
        "model_blobs",
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_model_blobs_model_id_models"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_model_blobs")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("started_at", _TIMESTAMP, nullable=True),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.Column("heartbeat_at", _TIMESTAMP, nullable=True),
        sa.Column("worker", sa.String(length=256), nullable=True),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_jobs_device_id_devices"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_device_id"), "jobs", ["device_id"])
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])
    op.drop_index("ix_measurements_run_id", table_name="measurements")
    op.drop_index("ix_measurements_key_hash", table_name="measurements")
    op.drop_index("ix_measurements_op_type", table_name="measurements")
    with op.batch_alter_table("measurements") as batch:
        batch.drop_constraint("uq_measurements_device_id_run_id_key_hash", type_="unique")
        batch.create_unique_constraint("uq_measurements_device_id_key_hash_run_id", ["device_id", "key_hash", "run_id"])
    op.create_index("ix_measurements_device_id_id", "measurements", ["device_id", "id"])
    op.create_index("ix_measurements_device_id_op_type_id", "measurements", ["device_id", "op_type", "id"])
    _backfill(op.get_bind())


def _backfill(connection: sa.Connection) -> None:
    """measured_kernels and tallies of the measurements stored so far, device by device, a page of keys at a time."""
    from predictor.store.summary import summarize_keys

    rows_of = _measurements.c
    device_ids = connection.execute(sa.select(rows_of.device_id).distinct()).scalars().all()
    for device_id in device_ids:
        tallies: dict[tuple[str, int], list[int]] = {}
        after = ""
        while True:
            hashes = connection.execute(
                sa.select(rows_of.key_hash).where(rows_of.device_id == device_id, rows_of.key_hash > after)
                .group_by(rows_of.key_hash).order_by(rows_of.key_hash).limit(_BACKFILL_ROWS)).scalars().all()
            if not hashes:
                break
            page = connection.execute(
                sa.select(rows_of.key_hash, rows_of.key, rows_of.op_type, rows_of.bits, rows_of.median_ms)
                .where(rows_of.device_id == device_id, rows_of.key_hash > after, rows_of.key_hash <= hashes[-1])
                .order_by(rows_of.key_hash, rows_of.id)).all()
            kernels: list[tuple[str, Any, str, int, list[float]]] = []
            for key_hash, key, op_type, bits, median_ms in page:
                counts = tallies.setdefault((op_type, int(bits)), [0, 0])
                counts[0] += 1
                if kernels and kernels[-1][0] == key_hash:
                    kernels[-1][4].append(float(median_ms))
                    continue
                counts[1] += 1
                kernels.append((key_hash, key, op_type, int(bits), [float(median_ms)]))
            _insert_kernels(connection, device_id, kernels, summarize_keys)
            after = hashes[-1]
        if tallies:
            connection.execute(_tallies.insert(), [
                {"device_id": device_id, "op_type": op_type, "bits": bits, "measurements": counts[0],
                 "kernels": counts[1]} for (op_type, bits), counts in sorted(tallies.items())])


def _insert_kernels(connection: sa.Connection, device_id: int, pending: list[tuple[str, Any, str, int, list[float]]],
                    summarize: Any) -> None:
    summaries = summarize([key for _, key, _, _, _ in pending])
    connection.execute(_measured_kernels.insert(), [
        {"device_id": device_id, "key_hash": key_hash, "op_type": op_type, "bits": bits,
         "median_ms": statistics.median(medians), "runs": len(medians), "seq": 0,
         "bytes_moved": None if summary is None else summary.bytes_moved,
         "macs": None if summary is None else summary.macs,
         "sparsity": None if summary is None else summary.sparsity,
         "sparsity_pattern": None if summary is None else summary.sparsity_pattern,
         "shape_hash": None if summary is None else summary.shape_hash}
        for (key_hash, _, op_type, bits, medians), summary in zip(pending, summaries, strict=True)])


def downgrade() -> None:
    op.drop_index("ix_measurements_device_id_op_type_id", table_name="measurements")
    op.drop_index("ix_measurements_device_id_id", table_name="measurements")
    with op.batch_alter_table("measurements") as batch:
        batch.drop_constraint("uq_measurements_device_id_key_hash_run_id", type_="unique")
        batch.create_unique_constraint("uq_measurements_device_id_run_id_key_hash", ["device_id", "run_id", "key_hash"])
    op.create_index("ix_measurements_op_type", "measurements", ["op_type"])
    op.create_index("ix_measurements_key_hash", "measurements", ["key_hash"])
    op.create_index("ix_measurements_run_id", "measurements", ["run_id"])
    op.drop_index("ix_jobs_status_created_at", table_name="jobs")
    op.drop_index(op.f("ix_jobs_device_id"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("model_blobs")
    op.drop_table("measurement_tallies")
    op.drop_index("ix_measured_kernels_device_id_shape_hash", table_name="measured_kernels")
    op.drop_index("ix_measured_kernels_device_id_seq", table_name="measured_kernels")
    op.drop_table("measured_kernels")
    _drop_device_columns("state_version", "table_seq")


def _drop_device_columns(*names: str) -> None:
    """Drop columns of devices. Not by SQLite's batch copy: dropping the old devices table would delete every row
    that refers to a device (ON DELETE CASCADE); SQLite drops a plain column in place."""
    if op.get_bind().dialect.name == "sqlite":
        for name in names:
            op.execute(f"ALTER TABLE devices DROP COLUMN {name}")
        return
    with op.batch_alter_table("devices") as batch:
        for name in names:
            batch.drop_column(name)
