"""Initial schema: devices, profiling runs, measurements, regressors, validations, models.

Revision ID: 0001
Revises:
Create Date: 2024-06-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types as of this revision; later model edits must not change them.
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table of the first schema."""
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("execution_provider", sa.String(length=128), nullable=False),
        sa.Column("runtime_version", sa.String(length=64), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("overhead", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("name", name=op.f("uq_devices_name")),
    )
    op.create_table(
        "profiling_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("started_at", _TIMESTAMP, nullable=False),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("budget_minutes", sa.Float(), nullable=True),
        sa.Column("report", _JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_profiling_runs_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profiling_runs")),
        sa.UniqueConstraint("run_id", name=op.f("uq_profiling_runs_run_id")),
    )
    op.create_index(op.f("ix_profiling_runs_device_id"), "profiling_runs", ["device_id"])
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key", _JSON, nullable=False),
        sa.Column("op_type", sa.String(length=64), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=False),
        sa.Column("median_ms", sa.Float(), nullable=False),
        sa.Column("p10_ms", sa.Float(), nullable=False),
        sa.Column("p90_ms", sa.Float(), nullable=False),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_measurements_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_measurements")),
        sa.UniqueConstraint(
            "device_id", "run_id", "key_hash", name=op.f("uq_measurements_device_id_run_id_key_hash")
        ),
    )
    op.create_index(op.f("ix_measurements_run_id"), "measurements", ["run_id"])
    op.create_index(op.f("ix_measurements_key_hash"), "measurements", ["key_hash"])
    op.create_index(op.f("ix_measurements_op_type"), "measurements", ["op_type"])
    op.create_table(
        "regressors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("op_type", sa.String(length=64), nullable=False),
        sa.Column("model_text", sa.Text(), nullable=False),
        sa.Column("metrics", _JSON, nullable=False),
        sa.Column("data_version", sa.String(length=64), nullable=False),
        sa.Column("trained_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_regressors_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_regressors")),
        sa.UniqueConstraint("device_id", "op_type", name=op.f("uq_regressors_device_id_op_type")),
    )
    op.create_table(
        "validations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=256), nullable=False),
        sa.Column("config_name", sa.String(length=256), nullable=False),
        sa.Column("predicted_ms", sa.Float(), nullable=False),
        sa.Column("measured_ms", sa.Float(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_validations_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_validations")),
    )
    op.create_index(op.f("ix_validations_device_id"), "validations", ["device_id"])
    op.create_table(
        "models",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("inputs", _JSON, nullable=False),
        sa.Column("kernels", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
    )


def downgrade() -> None:
    """Drop every table of the first schema."""
    op.drop_table("models")
    op.drop_index(op.f("ix_validations_device_id"), table_name="validations")
    op.drop_table("validations")
    op.drop_table("regressors")
    op.drop_index(op.f("ix_measurements_op_type"), table_name="measurements")
    op.drop_index(op.f("ix_measurements_key_hash"), table_name="measurements")
    op.drop_index(op.f("ix_measurements_run_id"), table_name="measurements")
    op.drop_table("measurements")
    op.drop_index(op.f("ix_profiling_runs_device_id"), table_name="profiling_runs")
    op.drop_table("profiling_runs")
    op.drop_table("devices")
