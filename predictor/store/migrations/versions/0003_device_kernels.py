"""What decides a device's kernels, where each run's measurements came from, and scaled validations.

- devices.kernel_profile: the runtime, CPU architecture and features, NCHWc block and probe kernels the device's
  agent observed (predictor.runtime.devices.KernelProfile);
- profiling_runs.runtime and profiling_runs.host: the runtime and host a run measured with;
- validations.scaled_ms: the measurement in the device's baseline state, what the prediction is held against.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("devices", sa.Column("kernel_profile", _JSON, nullable=True))
    op.add_column("profiling_runs", sa.Column("runtime", _JSON, nullable=True))
    op.add_column("profiling_runs", sa.Column("host", sa.Text(), nullable=True))
    op.add_column("validations", sa.Column("scaled_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("validations") as batch:
        batch.drop_column("scaled_ms")
    with op.batch_alter_table("profiling_runs") as batch:
        batch.drop_column("host")
        batch.drop_column("runtime")
    if op.get_bind().dialect.name == "sqlite":
        # In place: SQLite's batch copy drops the old devices table, and with it (ON DELETE CASCADE) every row that
        # refers to a device.
        op.execute("ALTER TABLE devices DROP COLUMN kernel_profile")
    else:
        with op.batch_alter_table("devices") as batch:
            batch.drop_column("kernel_profile")
