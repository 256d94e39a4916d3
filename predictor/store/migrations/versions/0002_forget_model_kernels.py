"""Forget the kernel lists stored with uploaded models (data only; the schema is unchanged).

Kernel lists stored before this revision were made by an extractor that read the external data an upload
named (files beside the server, `.env` for one) and folded their bytes into the kernels' weight shapes, which
GET /api/models/{id} then returned to anyone. Which rows hold such bytes cannot be told from the rows, so none
is kept: a model is offered again once it is uploaded again (its file is kept; the same bytes get the same id).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Set every stored kernel list to SQL NULL: the row reads as an upload that is not finished."""
    op.execute("UPDATE models SET kernels = NULL")


def downgrade() -> None:
    """Nothing to undo: the forgotten lists are not restored (uploading the models again rebuilds them)."""
