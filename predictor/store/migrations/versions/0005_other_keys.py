"""An index of the measured kernels whose key hash is not 32 lowercase hex digits (hand-written tables).

A predictor's load reads them apart from the others (predictor.store.aggregates); without this partial index
that query tested every kernel of the device (2.3 s at a million on PostgreSQL), to find none as a rule.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As predictor.store.models.MeasuredKernel declares it (frozen here: this revision's view).
_POSTGRESQL_WHERE = sa.text("key_hash !~ '^[0-9a-f]{32}$'")
_SQLITE_WHERE = sa.text("length(key_hash) != 32 OR key_hash GLOB '*[^0-9a-f]*'")


def upgrade() -> None:
    op.create_index("ix_measured_kernels_other_keys", "measured_kernels", ["device_id"],
                    postgresql_where=_POSTGRESQL_WHERE, sqlite_where=_SQLITE_WHERE)


def downgrade() -> None:
    op.drop_index("ix_measured_kernels_other_keys", table_name="measured_kernels")
